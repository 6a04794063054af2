"""The demo stack's one-shot migration job: sets up the schema version once and counts each
run, so tests can prove it ran exactly once however often the appliance boots."""
import os

import redis

password = open(os.environ.get("DB_PASSWORD_FILE", "/run/secrets/db-password")).read().strip()
db = redis.Redis(host=os.environ.get("DB_HOST", "db"), port=6379, password=password, socket_timeout=10)
db.setnx("schema_version", 1)
db.incr("migration_runs")
print("migration done")

//! nginx, the front door of an appliance with a registry or mirrors. On port 80 it serves the
//! instance's CA certificate (`/ca.crt`, which clients fetch before they trust anything, and
//! whose fingerprint the console banner prints); on 443 it serves TLS with the instance's
//! certificate (made on first boot by `airlock firstboot`, or the site's own) for
//! `registry.<domain>` and, on an appliance with mirrors, for the mirrors (`mirror_site`,
//! nginx's default server then). Images add their own names (`api.`, `app.`) in their overlays.
//! This is the build's "configure front door" stage.

use crate::plan::{BuildPlan, has_front_door};
use crate::tree::Tree;
use anyhow::{Result, anyhow};

/// nginx's default server: port 80 and, with the instance's certificate, 443, for any name;
/// `/ca.crt` over either; then `locations` (the mirrors' site, or nothing but 404s).
pub fn default_server(comment: &str, locations: &str) -> String {
    format!(
        r#"# Written by airlock: {comment}
server {{
    listen 80 default_server;
    listen [::]:80 default_server;
    listen 443 ssl default_server;
    listen [::]:443 ssl default_server;
    ssl_certificate /var/lib/airlock/tls/server.crt;
    ssl_certificate_key /var/lib/airlock/tls/server.key;
    server_name _;
    location = /ca.crt {{
        alias /var/lib/airlock/tls/ca.crt;
        types {{ }}
        default_type application/x-pem-file;
    }}
{locations}}}
"#
    )
}

/// `registry.<domain>` on 443: the registry (which does TLS and authentication itself, on port
/// 5000) behind the same certificate on the standard port.
pub const REGISTRY_CONF: &str = r#"# Written by airlock: the appliance's registry at registry.<domain>, port 443.
server {
    listen 443 ssl;
    listen [::]:443 ssl;
    ssl_certificate /var/lib/airlock/tls/server.crt;
    ssl_certificate_key /var/lib/airlock/tls/server.key;
    server_name ~^registry\.;
    client_max_body_size 0;
    location / {
        proxy_pass https://127.0.0.1:5000;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Proto https;
        proxy_read_timeout 900s;
        proxy_buffering off;
    }
}
"#;

/// Configures nginx as the front door (after the mirrors, whose site is the default server
/// when there is one).
pub fn install(root: &mut Tree, plan: &BuildPlan) -> Result<()> {
    if !has_front_door(plan) {
        return Ok(());
    }
    if root.lookup("etc/nginx/conf.d").is_none() {
        return Err(anyhow!("the root filesystem has no /etc/nginx/conf.d (is nginx installed?)"));
    }
    root.begin_layer();
    root.remove(b"etc/nginx/sites-enabled/default").map_err(|e| anyhow!("removing nginx's default site: {e}"))?;
    if plan.mirrors.is_empty() {
        let conf = default_server(
            "the appliance's front door (no mirrors here).",
            "    location / {\n        return 404;\n    }\n",
        );
        root.put_file("etc/nginx/conf.d/airlock-default.conf", 0o644, conf)?;
    }
    if !plan.containers.is_empty() {
        root.put_file("etc/nginx/conf.d/airlock-registry.conf", 0o644, REGISTRY_CONF)?;
    }
    Ok(())
}

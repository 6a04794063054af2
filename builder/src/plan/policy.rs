//! What airlock adds to a checked plan on its own account, apart from what the spec says: the
//! packages, units and services an appliance with container images or mirrors needs. Kept apart
//! from validation so that one reads as "is the spec right" and the other as "what does airlock
//! decide".

use super::{BuildPlan, Service};

/// Packages an appliance with container images needs: the registry that serves them and the
/// runtime that runs them (netavark needs nftables for its firewall rules, and aardvark-dns to
/// let containers find each other by name).
const CONTAINER_PACKAGES: &[&str] = &["docker-registry", "podman", "netavark", "aardvark-dns", "nftables"];

/// Debian's nginx flavours: any of them is the front door.
const WEB_SERVERS: &[&str] = &["nginx", "nginx-light", "nginx-full", "nginx-extras", "nginx-core"];
/// The flavour added when the spec installs none.
const DEFAULT_WEB_SERVER: &str = "nginx-light";

/// The front door's unit (nginx; it serves the mirrors too).
pub const WEB_UNIT: &str = "nginx.service";

/// Adds what the plan's containers and mirrors need.
pub(super) fn apply(plan: &mut BuildPlan) {
    let mut packages = Vec::new();
    // An appliance that carries container images serves them from its own registry (and runs
    // them with podman): both come with the base OS, and the registry is one of its services.
    if !plan.containers.is_empty() {
        packages.extend(CONTAINER_PACKAGES.iter().map(|p| p.to_string()));
        add_service(&mut plan.services, "registry", "docker-registry.service", "https://registry.{domain}/");
    }
    // nginx is the front door of an appliance with a registry or mirrors: the CA over plain
    // HTTP (`/ca.crt`), TLS with the instance's certificate for `registry.<domain>`, and the
    // mirrors on 80 and 443 (`front_door.rs`).
    if has_front_door(plan) {
        if !plan.base.packages.iter().any(|p| WEB_SERVERS.contains(&p.as_str())) {
            packages.push(DEFAULT_WEB_SERVER.to_string());
        }
        if !plan.enable.iter().any(|u| u == WEB_UNIT) {
            plan.enable.push(WEB_UNIT.to_string());
        }
    }
    if !plan.mirrors.is_empty() {
        add_service(&mut plan.services, "mirror", WEB_UNIT, "http://{address}/");
    }
    plan.base.add_packages(&packages);
}

/// Whether the plan's appliance has a front door (nginx).
pub fn has_front_door(plan: &BuildPlan) -> bool {
    !plan.containers.is_empty() || !plan.mirrors.is_empty()
}

/// A service airlock provides, unless the spec lists one by that name already.
fn add_service(services: &mut Vec<Service>, name: &str, unit: &str, url: &str) {
    if !services.iter().any(|s| s.name == name) {
        services.push(Service { name: name.into(), unit: unit.into(), url: Some(url.into()) });
    }
}

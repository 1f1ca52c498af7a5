//! Where an environment goes and how large it is, by the provider's rules: the
//! local provider's one region and DevPocket sizes, DigitalOcean's regions, sizes
//! and user-data limit. The routes ask here once and get the answer or the 4xx.

use std::collections::BTreeMap;
use std::time::Duration;

use devpocket_actors::provider::digitalocean;
use serde_json::Value;
use uuid::Uuid;

use super::DIGITALOCEAN_SIZES;
use crate::db::templates::Template;
use crate::error::ApiError;
use crate::plans::{self, Plan};
use crate::startup::AppState;

/// How long DigitalOcean's catalog may take before a check is left to its own refusal.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(5);

/// What a new environment asked for, as sent.
pub struct Request<'a> {
    pub plan: Plan,
    pub region: Option<String>,
    pub size: Option<String>,
    pub template: &'a Template,
    pub variables: &'a BTreeMap<String, String>,
}

/// Where a new environment goes on the configured provider.
pub struct Placement {
    pub region: String,
    /// The provider's own name for the size (a DigitalOcean slug there).
    pub size: String,
}

/// The region and size of a new environment on the provider new environments use,
/// the provider's defaults filling in what the request left out; a 4xx saying what
/// to send instead when the provider cannot make it.
pub async fn place(state: &AppState, request: Request<'_>) -> Result<Placement, ApiError> {
    let region = request
        .region
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let size = request
        .size
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let plan = request.plan;
    match &state.settings.digitalocean {
        Some(d) if state.default_provider == digitalocean::NAME => {
            let region = region.unwrap_or_else(|| d.region.clone());
            let valid = region.len() <= 16
                && region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            if !valid {
                return Err(ApiError::validation(
                    "region",
                    format!("`{region}` is not a DigitalOcean region such as nyc3 or fra1"),
                ));
            }
            check_region(state, &region).await?;
            let size = match size {
                Some(size) => digitalocean_size(plan, &size, &do_sizes(state, &size).await)?,
                None => d.size.clone(),
            };
            check_user_data(request.template, request.variables)?;
            Ok(Placement { region, size })
        }
        _ => {
            let region = region.unwrap_or_else(|| "local".to_owned());
            if region != "local" {
                return Err(ApiError::validation(
                    "region",
                    format!("`{region}` is not a region of the local provider; use `local`"),
                ));
            }
            let size = size.unwrap_or_else(|| "small".to_owned());
            check_size(plan, &size)?;
            Ok(Placement { region, size })
        }
    }
}

/// The size an environment on `provider` is resized to when asked for `size`: on
/// DigitalOcean a slug within the plan; elsewhere as asked (the provider refuses).
pub async fn resized(
    state: &AppState,
    plan: Plan,
    provider: &str,
    size: String,
) -> Result<String, ApiError> {
    if provider != digitalocean::NAME {
        return Ok(size);
    }
    let catalog = do_sizes(state, &size).await;
    digitalocean_size(plan, &size, &catalog)
}

/// Refuses a region DigitalOcean does not have, or where it takes no new droplets,
/// naming those it has (its catalog is cached). When the catalog cannot be read
/// quickly the region is let through: DigitalOcean's own refusal will say it.
async fn check_region(state: &AppState, region: &str) -> Result<(), ApiError> {
    let Some(provider) = &state.digitalocean else {
        return Ok(());
    };
    let regions = match tokio::time::timeout(CATALOG_TIMEOUT, provider.regions()).await {
        Ok(Ok(regions)) => regions,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "DigitalOcean's regions cannot be read; not checking the region");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!("DigitalOcean's regions took too long; not checking the region");
            return Ok(());
        }
    };
    let available: Vec<&str> = regions
        .iter()
        .filter(|r| r["available"].as_bool().unwrap_or(true))
        .filter_map(|r| r["slug"].as_str())
        .collect();
    if available.is_empty() || available.contains(&region) {
        return Ok(());
    }
    Err(ApiError::validation(
        "region",
        format!(
            "`{region}` is not a DigitalOcean region that takes new droplets; use one of {}",
            available.join(", ")
        ),
    ))
}

/// DigitalOcean's sizes (cached), to check a size that is not one of DevPocket's;
/// none when they cannot be read quickly (the built-in list is used then).
async fn do_sizes(state: &AppState, size: &str) -> Vec<Value> {
    let Some(provider) = &state.digitalocean else {
        return Vec::new();
    };
    if digitalocean::size_slug(size).is_some() {
        return Vec::new();
    }
    match tokio::time::timeout(CATALOG_TIMEOUT, provider.sizes()).await {
        Ok(Ok(sizes)) => sizes,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "DigitalOcean's sizes cannot be read; using the built-in list");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("DigitalOcean's sizes took too long; using the built-in list");
            Vec::new()
        }
    }
}

/// Refuses, before anything is made, a template whose cloud-init user-data would
/// be over DigitalOcean's 64 KiB.
fn check_user_data(
    template: &Template,
    variables: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let keys = devpocket_actors::ssh::generate_machine_keys("size-check")
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("generating keys: {e}")))?;
    let packages: Vec<String> = template
        .packages
        .read("packages")
        .ok()
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let cloud_init = template
        .cloud_init
        .read("cloud_init")
        .ok()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let volume = digitalocean::volume_name(Uuid::nil());
    digitalocean::user_data::UserDataSpec {
        environment_id: Uuid::nil(),
        slug: "size-check-000000-0000000000000000000000000000000000000000",
        user: "dev",
        keys: &keys,
        volume_name: Some(&volume),
        packages: &packages,
        cloud_init: &cloud_init,
        bootstrap: &template.bootstrap,
        environment_variables: variables,
    }
    .render()
    .map(drop)
    .map_err(|e| ApiError::validation("template_id", e.to_string()))
}

/// A DigitalOcean environment's size: a DevPocket size (`small` … `xlarge`), or a
/// DigitalOcean size from `catalog` (DigitalOcean's list, when it could be read) or
/// else `DIGITALOCEAN_SIZES`, within the plan. Returns the DigitalOcean slug.
fn digitalocean_size(plan: Plan, size: &str, catalog: &[Value]) -> Result<String, ApiError> {
    if let Some(slug) = digitalocean::size_slug(size) {
        check_size(plan, size)?;
        return Ok(slug.to_owned());
    }
    if let Some(found) = catalog.iter().find(|s| s["slug"] == size) {
        let (cpus, memory) = (found["vcpus"].as_u64(), found["memory"].as_u64());
        if found["available"] == false {
            return Err(ApiError::validation(
                "size",
                format!("`{size}` is not available at DigitalOcean now; choose another size"),
            ));
        }
        if !plan.fits(cpus.unwrap_or(u64::MAX), memory.unwrap_or(u64::MAX)) {
            return Err(too_large(plan, size));
        }
        return Ok(size.to_owned());
    }
    let Some((slug, equivalent, ..)) = DIGITALOCEAN_SIZES.iter().find(|s| s.0 == size) else {
        let mut names: Vec<&str> = plans::SIZES.iter().map(|s| s.name).collect();
        names.extend(DIGITALOCEAN_SIZES.iter().map(|s| s.0));
        return Err(ApiError::validation(
            "size",
            format!("`{size}` is not a size; choose one of {}", names.join(", ")),
        ));
    };
    if !plan.allows_size(equivalent) {
        return Err(too_large(plan, size));
    }
    Ok((*slug).to_owned())
}

/// A DevPocket size (`small` … `xlarge`) within the plan.
fn check_size(plan: Plan, size: &str) -> Result<(), ApiError> {
    if plans::size(size).is_none() {
        let names: Vec<&str> = plans::SIZES.iter().map(|s| s.name).collect();
        return Err(ApiError::validation(
            "size",
            format!("`{size}` is not a size; choose one of {}", names.join(", ")),
        ));
    }
    if !plan.allows_size(size) {
        return Err(too_large(plan, size));
    }
    Ok(())
}

/// A size above the plan's largest.
fn too_large(plan: Plan, size: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "The {size} size is not available on the {plan} plan (up to {}); choose a smaller size or upgrade.",
        plan.limits().max_size
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code(result: Result<impl std::fmt::Debug, ApiError>) -> &'static str {
        match result.expect_err("refused") {
            ApiError::Validation(_) => "422",
            ApiError::Forbidden(_) => "403",
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn devpocket_sizes_stay_within_the_plan() {
        assert!(check_size(Plan::Free, "small").is_ok());
        assert_eq!(code(check_size(Plan::Free, "medium")), "403");
        assert_eq!(code(check_size(Plan::Admin, "huge")), "422");
    }

    #[test]
    fn digitalocean_sizes_are_slugs_within_the_plan() {
        let slug = digitalocean_size(Plan::Free, "small", &[]).expect("small");
        assert_eq!(slug, "s-1vcpu-1gb");
        assert_eq!(code(digitalocean_size(Plan::Free, "large", &[])), "403");
        // Without DigitalOcean's catalog, its sizes are judged by the built-in list.
        let slug = digitalocean_size(Plan::Starter, "s-1vcpu-2gb", &[]).expect("listed");
        assert_eq!(slug, "s-1vcpu-2gb");
        assert_eq!(
            code(digitalocean_size(Plan::Free, "s-1vcpu-2gb", &[])),
            "403"
        );
        assert_eq!(code(digitalocean_size(Plan::Admin, "s-64vcpu", &[])), "422");
        let catalog = [
            json!({"slug": "c-2", "vcpus": 2, "memory": 4096, "available": true}),
            json!({"slug": "gone-1", "vcpus": 1, "memory": 1024, "available": false}),
        ];
        assert_eq!(
            digitalocean_size(Plan::Starter, "c-2", &catalog).expect("c-2"),
            "c-2"
        );
        assert_eq!(code(digitalocean_size(Plan::Free, "c-2", &catalog)), "403");
        assert_eq!(
            code(digitalocean_size(Plan::Admin, "gone-1", &catalog)),
            "422"
        );
    }
}

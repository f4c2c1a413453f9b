//! Demo data: tenant DEMO (`demo.pbx.local`) with extensions 100–109.

use rand::distr::{Alphanumeric, SampleString};

use crate::model::Tenant;
use crate::repo::{NewExtension, Repo, RepoError};

pub const DEMO_CODE: &str = "DEMO";
pub const DEMO_DOMAIN: &str = "demo.pbx.local";
const PASSWORD_LEN: usize = 16;

/// Credentials of an extension created just now; the password exists
/// nowhere else, so it is shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredentials {
    pub number: String,
    pub username: String,
    pub password: String,
}

/// Creates whatever part of the demo data is missing; returns the
/// credentials of the extensions it created.
pub async fn ensure_demo(repo: &Repo) -> Result<(Tenant, Vec<NewCredentials>), RepoError> {
    let tenant = match repo.tenant_by_code(DEMO_CODE).await? {
        Some(t) => t,
        None => repo.create_tenant("Demo", DEMO_CODE, DEMO_DOMAIN).await?,
    };
    let mut created = Vec::new();
    for number in 100..=109 {
        let number = number.to_string();
        if repo.extension(&tenant.id, &number).await?.is_some() {
            continue;
        }
        let password = Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LEN);
        let extension = repo
            .create_extension(
                &tenant,
                NewExtension {
                    number: number.clone(),
                    display_name: format!("Demo {number}"),
                    username: None,
                    password: password.clone(),
                },
            )
            .await?;
        created.push(NewCredentials {
            number,
            username: extension.username,
            password,
        });
    }
    Ok((tenant, created))
}

//! Demo data: tenant DEMO (`demo.pbx.local`) with extensions 100–109 by
//! default; tests and benchmarks ask for more, with a known password.

use futures::stream::{self, StreamExt};
use rand::distr::{Alphanumeric, SampleString};

use crate::model::Tenant;
use crate::repo::{NewExtension, Repo, RepoError};

pub const DEMO_CODE: &str = "DEMO";
pub const DEMO_DOMAIN: &str = "demo.pbx.local";
const PASSWORD_LEN: usize = 16;
/// Extensions created at once: enough to fill raft-store's group commit.
const CREATE_CONCURRENCY: usize = 64;

/// Which demo extensions to create, and with which password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSpec {
    pub first: u32,
    pub last: u32,
    /// One password for every extension (tests, benchmarks); `None` = a
    /// random one each, printed once.
    pub password: Option<String>,
}

impl Default for DemoSpec {
    fn default() -> Self {
        DemoSpec {
            first: 100,
            last: 109,
            password: None,
        }
    }
}

impl DemoSpec {
    /// Parses a number range such as `100-109`.
    pub fn parse_range(text: &str) -> Result<(u32, u32), String> {
        let parsed = text
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        match parsed {
            Some((first, last)) if first <= last => Ok((first, last)),
            _ => Err(format!(
                "demo_extensions '{text}' is not a range <first>-<last> with first <= last"
            )),
        }
    }
}

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
pub async fn ensure_demo(
    repo: &Repo,
    spec: &DemoSpec,
) -> Result<(Tenant, Vec<NewCredentials>), RepoError> {
    let tenant = match repo.tenant_by_code(DEMO_CODE).await? {
        Some(t) => t,
        None => match repo.create_tenant("Demo", DEMO_CODE, DEMO_DOMAIN).await {
            Ok(t) => t,
            // Another node starting with the demo created it meanwhile.
            Err(RepoError::AlreadyExists { .. }) => repo
                .tenant_by_code(DEMO_CODE)
                .await?
                .ok_or_else(|| RepoError::Conflict {
                    what: format!("tenant {DEMO_CODE}"),
                    attempts: 1,
                })?,
            Err(e) => return Err(e),
        },
    };
    let created: Vec<Result<Option<NewCredentials>, RepoError>> =
        stream::iter(spec.first..=spec.last)
            .map(|number| create_if_missing(repo, &tenant, number.to_string(), spec))
            .buffer_unordered(CREATE_CONCURRENCY)
            .collect()
            .await;
    let mut credentials = Vec::new();
    for result in created {
        credentials.extend(result?);
    }
    // Numbers have no leading zeros, so (length, text) is numeric order.
    credentials.sort_by(|a, b| (a.number.len(), &a.number).cmp(&(b.number.len(), &b.number)));
    Ok((tenant, credentials))
}

async fn create_if_missing(
    repo: &Repo,
    tenant: &Tenant,
    number: String,
    spec: &DemoSpec,
) -> Result<Option<NewCredentials>, RepoError> {
    let password = spec
        .password
        .clone()
        .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LEN));
    let new = NewExtension {
        number: number.clone(),
        display_name: format!("Demo {number}"),
        username: None,
        password: password.clone(),
    };
    match repo.create_extension(tenant, new).await {
        Ok(extension) => Ok(Some(NewCredentials {
            number,
            username: extension.username,
            password,
        })),
        // Kept from an earlier start, with the password printed then.
        Err(RepoError::AlreadyExists { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

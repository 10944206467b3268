//! Quota snapshots: fetched from a provider's usage endpoint with a working
//! token, recorded with history. A 401 goes through the reject path once
//! (a real refresh), then the call is retried with the new token.

use crate::clock;
use crate::error::{Error, Result};
use crate::provider::usage::{self, UsageOutcome};
use crate::provider::HttpResponse;
use crate::warden::{Grant, Warden};
use crate::QuotaRow;

fn check_supported(warden: &Warden, id: &str) -> Result<crate::credential::Credential> {
    let c = warden.get(id)?;
    if usage::supported(c.provider.kind) {
        Ok(c)
    } else {
        Err(Error::QuotaUnsupported {
            id: id.to_owned(),
            provider: c.provider.kind.to_string(),
        })
    }
}

/// The newest recorded snapshot.
pub fn latest(warden: &Warden, id: &str) -> Result<QuotaRow> {
    check_supported(warden, id)?;
    warden
        .latest_quota(id)?
        .ok_or_else(|| Error::NoQuota(id.to_owned()))
}

/// One call to the usage endpoint with `grant`'s token.
fn call(
    warden: &Warden,
    c: &crate::credential::Credential,
    grant: &Grant,
) -> Result<(UsageOutcome, Option<HttpResponse>)> {
    let config = warden.config();
    let request = usage::usage_request(
        c.provider.kind,
        grant.access_token.expose(),
        c.claims.account_id.as_deref(),
        &config.endpoints,
    )
    .ok_or_else(|| Error::QuotaUnsupported {
        id: c.id.clone(),
        provider: c.provider.kind.to_string(),
    })?
    .map_err(|e| Error::Config(format!("usage endpoint: {e}")))?;
    Ok(
        match warden.upstream().send(&request, config.request_timeout) {
            Ok(resp) => (
                usage::parse_usage(c.provider.kind, &resp, clock::now_ms()),
                Some(resp),
            ),
            Err(failure) => (UsageOutcome::Failed(failure), None),
        },
    )
}

/// Fetches a snapshot now and records it (failures too: they are history,
/// not fatal). Errors only when no token can be had or the database fails.
pub fn fetch(warden: &Warden, id: &str) -> Result<QuotaRow> {
    let c = check_supported(warden, id)?;
    let grant = warden.token(id, std::time::Duration::ZERO)?;
    let (mut outcome, mut resp) = call(warden, &c, &grant)?;
    if outcome == UsageOutcome::Unauthorized {
        log::info!("{id}: usage endpoint rejected the access token; refreshing once");
        let fresh = warden.reject(id, grant.access_token.expose())?;
        (outcome, resp) = call(warden, &warden.get(id)?, &fresh)?;
    }
    let mut row = QuotaRow {
        credential_id: id.to_owned(),
        fetched_at_ms: clock::now_ms(),
        status: "ok".into(),
        http_status: resp.as_ref().map(|r| r.status),
        quota: None,
        error_message: None,
    };
    match outcome {
        UsageOutcome::Ok(q) => row.quota = Some(q),
        UsageOutcome::Unauthorized => {
            row.status = "unauthorized".into();
            row.error_message =
                Some("the usage endpoint refused a freshly refreshed token too".into());
        }
        UsageOutcome::Failed(f) => {
            log::warn!("{id}: quota fetch failed: {}", f.code);
            row.status = f.code;
            row.error_message = Some(f.message);
        }
    }
    let keep = clock::millis(warden.config().quota_keep);
    warden.record_quota(
        &row,
        resp.as_ref().map(|r| r.body.as_slice()),
        row.fetched_at_ms.saturating_sub(keep),
    )?;
    // An exhausted window cools the account down until its reset; a
    // snapshot with nothing exhausted ends a cooldown at once.
    warden.cooldown_from_quota(&row)?;
    Ok(row)
}

//! `GET|POST /v1/credentials/{id}/quota`: the latest quota snapshot, or a
//! snapshot fetched now. No snapshot yet is 404 `no_quota`; a provider
//! without a quota endpoint is 404 `quota_unsupported` (DESIGN.md §7).
//! These two functions are the routes' whole seam with [`crate::quota`].

use crate::quota;
use crate::view::QuotaView;
use crate::warden::Warden;

use super::response::{ApiError, Reply};

/// `GET …/quota`: the newest recorded snapshot.
pub fn quota_get(warden: &Warden, id: &str) -> Result<Reply, ApiError> {
    let row = quota::latest(warden, id)?;
    Ok(Reply::json(200, &QuotaView::new(&row)))
}

/// `POST …/quota`: fetches a snapshot now, records it and answers it (a
/// failed fetch is recorded and answered too, with its status).
pub fn quota_post(warden: &Warden, id: &str) -> Result<Reply, ApiError> {
    let row = quota::fetch(warden, id)?;
    Ok(Reply::json(200, &QuotaView::new(&row)))
}

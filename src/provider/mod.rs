//! Each provider's wire format, as pure functions over data: build the
//! refresh request, read the answer, classify failures. No sockets, no
//! clock reads — the caller passes `now` — so every case is table-tested
//! against the canned bodies in `fixtures/`.

mod classify;
mod form;
mod kind;
mod request;
mod retry_after;
mod scrub;
mod url;
mod wire;

pub mod claude;
pub mod codex;
pub mod google;
pub mod oauth2;
pub mod usage;

#[cfg(test)]
pub(crate) mod testkit;

pub use classify::{
    is_permanent_code, is_transient_code, parse_answer, parse_refresh, PERMANENT_CODES,
    TRANSIENT_CODES,
};
pub use form::{form_component, form_decode, form_encode, form_unescape, percent_unescape};
// The provider settings' enums are credential data: they live in
// `credential`, which names nothing of `provider` (ARCHITECTURE.md).
pub use crate::credential::{ClientAuth, Encoding, ProviderKind};
pub use kind::{default_lifetime_secs, oidc_claims, Endpoints};
pub(crate) use kind::{oidc_answer_claims, str_at, Dialect};
pub use request::{check_config, effective_client_auth, grant_request, refresh_request};
pub use retry_after::{parse_retry_after, MAX_RETRY_AFTER_MS};
pub use scrub::scrub;
pub use url::check_url;
pub(crate) use url::{is_loopback_host, url_host};
pub use wire::{Failure, HttpRequest, HttpResponse, Outcome, Permanence, Tokens, PUBLIC_FIELDS};

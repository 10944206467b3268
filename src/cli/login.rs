//! `tokenwarden login PROVIDER`: the flags made into a [`LoginRequest`],
//! run by [`crate::login::run`], and the result said in one line.

use std::io::BufRead;

use super::args::{Cli, LoginArgs};
use super::open;
use crate::admin::Stored;
use crate::credential::ProviderKind;
use crate::error::{Error, IoError, Result};
use crate::login::run::{self, LoginRequest, Method, OAuth2Flags};
use crate::login::LoginClient;
use crate::secret::Secret;

fn read_secret(path: &std::path::Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::from(IoError::with_path("cannot read the client secret", path, e)))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(Error::BadInput(format!("{} is empty", path.display())));
    }
    Ok(Secret::new(secret))
}

pub(super) fn login(cli: &Cli, a: &LoginArgs) -> Result<()> {
    let warden = open(cli, "login")?;
    let client = match a.provider {
        ProviderKind::Codex => LoginClient::codex(&warden.config().endpoints),
        ProviderKind::Claude => LoginClient::claude(),
        ProviderKind::OAuth2 => {
            let stored = match &a.id {
                Some(id) => match warden.get(id) {
                    Ok(c) if c.provider.kind == ProviderKind::OAuth2 => Some(c),
                    Ok(_) | Err(Error::NotFound(_)) => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let flags = OAuth2Flags {
                issuer: a.issuer.clone(),
                authorize_url: a.authorize_url.clone(),
                token_url: a.token_url.clone(),
                device_url: a.device_url.clone(),
                client_id: a.client_id.clone(),
                client_secret: a
                    .client_secret_file
                    .as_deref()
                    .map(read_secret)
                    .transpose()?,
                scope: a.scope.clone(),
            };
            run::oauth2_client(&warden, &flags, stored.as_ref())?
        }
        ProviderKind::Google => LoginClient::google(),
    };
    let method = match (a.device, a.manual) {
        (true, _) => Method::Device,
        (_, true) => Method::Manual,
        _ => Method::Browser {
            open: !a.no_browser,
            port: a.redirect_port,
        },
    };
    let req = LoginRequest {
        client,
        id: a.id.clone(),
        method,
        timeout: a.timeout,
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let input: &mut dyn BufRead = &mut input;
    let (row, stored) = run::login(&warden, &req, &mut |m| eprintln!("{m}"), input)?;
    let what = match stored {
        Stored::New => "new",
        Stored::Updated { revived: true } => "revived",
        Stored::Updated { revived: false } => "updated",
    };
    eprintln!(
        "signed in: credential '{}' ({what}); `tokenwarden token {}` prints its access token",
        row.id, row.id
    );
    println!("{} {what}", row.id);
    Ok(())
}

//! PKCE (RFC 7636, method `S256`) and the `state` value: random bytes in,
//! strings out, so the tests can pin them against the RFC's own example.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// A code verifier and its `S256` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkce {
    /// Sent with the code exchange only: it proves the exchange comes from
    /// whoever started the flow.
    pub verifier: Secret,
    /// `BASE64URL(SHA256(verifier))`, sent in the authorize URL.
    pub challenge: String,
}

impl Pkce {
    /// The verifier is the 32 bytes in base64url (43 characters, the
    /// minimum RFC 7636 §4.1 allows and what its Appendix B does).
    pub fn from_bytes(random: &[u8; 32]) -> Pkce {
        let verifier = URL_SAFE_NO_PAD.encode(random);
        Pkce {
            challenge: challenge_of(&verifier),
            verifier: Secret::new(verifier),
        }
    }
}

/// The `S256` challenge of a verifier.
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A `state` value: 32 random bytes in base64url (what the Codex CLI sends).
pub fn state_from(random: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7636_appendix_b() {
        let bytes = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let p = Pkce::from_bytes(&bytes);
        assert_eq!(
            p.verifier.expose(),
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
        assert_eq!(p.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        // (verifier, challenge)
        let table = [
            ("", "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"),
            ("a", "ypeBEsobvcr6wjGzmiPcTaeG7_gUfE5yuYB3ha_uSLs"),
        ];
        for (verifier, challenge) in table {
            assert_eq!(challenge_of(verifier), challenge, "{verifier}");
        }
        assert_eq!(state_from(&[0; 32]), "A".repeat(43));
        assert_ne!(state_from(&[1; 32]), state_from(&[2; 32]));
    }
}

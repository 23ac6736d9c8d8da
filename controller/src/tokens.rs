//! Secrets the controller hands out: device, API and bootstrap tokens (256-bit random, shown
//! once, stored as their SHA-256), pairing codes and password hashes (argon2).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What a token is for; its prefix tells people (and secret scanners) what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A device's check-in token.
    Device,
    /// A user's API token for fleetctl.
    Api,
    /// Enrolls devices without approval, for bulk provisioning.
    Bootstrap,
    /// The agent's secret for claiming its token after approval.
    Claim,
    /// A dashboard login (the session cookie).
    Session,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Device => "fleetdev_",
            TokenKind::Api => "fleetapi_",
            TokenKind::Bootstrap => "fleetboot_",
            TokenKind::Claim => "fleetclaim_",
            TokenKind::Session => "fleetsess_",
        }
    }
}

/// A fresh token: the prefix and 256 random bits in hex.
pub fn generate(kind: TokenKind) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), hex::encode(bytes))
}

/// What is stored for a token. Tokens carry 256 random bits, so a plain SHA-256 is enough
/// (no dictionary to guard against), and lookups stay one indexed query.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Pairing-code alphabet: no 0/O, 1/I/L, so a code read over the phone survives.
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Length of a pairing code.
pub const CODE_LEN: usize = 8;

/// A fresh 8-character pairing code.
pub fn pairing_code() -> String {
    let mut out = String::with_capacity(CODE_LEN);
    while out.len() < CODE_LEN {
        let b = (OsRng.next_u32() & 0xff) as usize;
        // Rejection sampling keeps the distribution uniform.
        if b < CODE_ALPHABET.len() * (256 / CODE_ALPHABET.len()) {
            out.push(CODE_ALPHABET[b % CODE_ALPHABET.len()] as char);
        }
    }
    out
}

/// A code as typed by a person: upper case, spaces and dashes dropped.
pub fn normalize_code(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

/// Errors of password handling.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Hashing failed (should not happen with a fresh salt).
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// Too short to be a password.
    #[error("the password is too short: at least 12 characters")]
    TooShort,
}

/// An argon2id hash in PHC format.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < 12 {
        return Err(PasswordError::TooShort);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the stored hash; an unreadable hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks `password` against the user's stored hash, or, for a user that does not exist
/// (`None`), against a hash of a random password made once with the same parameters, so a
/// wrong password costs the same argon2 work either way and the time does not tell which
/// users exist. Always false for `None`.
pub fn verify_password_or_decoy(password: &str, stored: Option<&str>) -> bool {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match stored {
        Some(hash) => verify_password(password, hash),
        None => {
            let decoy = DECOY.get_or_init(|| {
                hash_password(&format!("decoy-{}", random_password())).unwrap_or_default()
            });
            let _ = verify_password(password, decoy);
            false
        }
    }
}

/// A fresh 128-bit value in hex (the login form's CSRF cookie).
pub fn login_nonce() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A short random id (`bytes` random bytes in hex), e.g. a silence's.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A readable random password for `users add` when none is given.
pub fn random_password() -> String {
    let mut bytes = [0u8; 12];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_prefixed_and_hash_stably() {
        let a = generate(TokenKind::Device);
        let b = generate(TokenKind::Device);
        assert_ne!(a, b);
        assert!(a.starts_with("fleetdev_") && a.len() == 9 + 64, "{a}");
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn pairing_codes_use_the_unambiguous_alphabet() {
        for _ in 0..200 {
            let c = pairing_code();
            assert_eq!(c.len(), CODE_LEN);
            assert!(c.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{c}");
        }
        assert_eq!(normalize_code(" abcd-efgh "), "ABCDEFGH");
    }

    #[test]
    fn passwords() {
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
        let h = hash_password("correct horse battery").expect("hash");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterz", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(verify_password_or_decoy("correct horse battery", Some(&h)));
        assert!(!verify_password_or_decoy("correct horse battery", None));
    }
}

//! Git endpoints (primary and mirrors), their credentials, and how credentials answer libgit2.

use std::fmt;
use std::path::{Path, PathBuf};

use git2::{Cred, CredentialType};

/// Username sent with an HTTPS token when none is configured (GitHub's and Gitea's convention;
/// GitLab accepts any username with a token).
pub const DEFAULT_TOKEN_USERNAME: &str = "x-access-token";

/// Username used for SSH when neither the configuration nor the URL names one.
pub const DEFAULT_SSH_USERNAME: &str = "git";

/// How many times libgit2 may ask for a secret for one connection before we give up. libgit2
/// asks again after the server rejects a credential and would otherwise loop forever.
const MAX_SECRET_OFFERS: u32 = 1;

/// A Git server that serves the fleet repository: `git://`, `ssh://` (or scp-like), `https://`,
/// `http://` or a local path.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The repository URL, as `git clone` would take it.
    pub url: String,
    /// The credentials to present if the server asks for any.
    pub auth: Auth,
}

/// Credentials for one endpoint. `Debug` never prints a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous access (public repositories, `git://`).
    None,
    /// An SSH private key file, optionally encrypted with a passphrase.
    SshKey {
        /// The SSH user; when `None`, the user in the URL, else [`DEFAULT_SSH_USERNAME`].
        username: Option<String>,
        /// Path of the private key (OpenSSH or PEM format).
        private_key: PathBuf,
        /// Passphrase of the key, if it is encrypted.
        passphrase: Option<String>,
    },
    /// An HTTPS access token, sent as basic auth with the token as password.
    HttpsToken {
        /// The basic-auth username, [`DEFAULT_TOKEN_USERNAME`] unless configured.
        username: String,
        /// The token.
        token: String,
    },
}

impl Endpoint {
    /// An endpoint with anonymous access.
    pub fn new(url: impl Into<String>) -> Self {
        Endpoint {
            url: url.into(),
            auth: Auth::None,
        }
    }

    /// The same endpoint with credentials.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// The URL with any password in it replaced by `***`: safe for logs and metric labels.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.redacted_url())
            .field("auth", &self.auth)
            .finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

impl Auth {
    /// An HTTPS token with the default username [`DEFAULT_TOKEN_USERNAME`].
    pub fn https_token(token: impl Into<String>) -> Self {
        Auth::HttpsToken {
            username: DEFAULT_TOKEN_USERNAME.to_string(),
            token: token.into(),
        }
    }

    /// An unencrypted SSH key, with the user taken from the URL (or [`DEFAULT_SSH_USERNAME`]).
    pub fn ssh_key(private_key: impl Into<PathBuf>) -> Self {
        Auth::SshKey {
            username: None,
            private_key: private_key.into(),
            passphrase: None,
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::SshKey {
                username,
                private_key,
                passphrase,
            } => f
                .debug_struct("SshKey")
                .field("username", username)
                .field("private_key", private_key)
                .field("passphrase", &passphrase.as_ref().map(|_| "***"))
                .finish(),
            Auth::HttpsToken { username, .. } => f
                .debug_struct("HttpsToken")
                .field("username", username)
                .field("token", &"***")
                .finish(),
        }
    }
}

/// Replaces the password of `scheme://user:password@host/...` with `***`. Other URLs (scp-like
/// `git@host:path`, local paths, URLs without a password) are returned unchanged.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

/// What to answer when libgit2 asks for credentials: the pure decision, apart from building a
/// [`git2::Cred`] (which reads key files), so it can be tested with tables of cases.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CredentialChoice<'a> {
    /// Only a username (libgit2's first SSH question when the URL has no user).
    Username(&'a str),
    /// An SSH key file.
    SshKey {
        username: &'a str,
        private_key: &'a Path,
        passphrase: Option<&'a str>,
    },
    /// Basic auth.
    UserPass {
        username: &'a str,
        password: &'a str,
    },
}

/// Why no credential is offered; becomes the error of the fetch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CredentialRefusal {
    /// The server wants credentials and the endpoint has none.
    NoneConfigured,
    /// The configured credential was already offered and the server asked again.
    Rejected,
    /// The server wants a kind of credential the endpoint does not have.
    Unsupported { allowed: CredentialType },
}

impl fmt::Display for CredentialRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialRefusal::NoneConfigured => {
                f.write_str("the server requires credentials, but none are configured")
            }
            CredentialRefusal::Rejected => f.write_str("the server rejected the credentials"),
            CredentialRefusal::Unsupported { allowed } => write!(
                f,
                "the server asks for credentials of kind {allowed:?}, \
                 which do not match the configured ones"
            ),
        }
    }
}

/// Answers libgit2's credential questions for one connection; remembers what it offered so a
/// rejected secret is not offered again.
#[derive(Debug, Default)]
pub(crate) struct CredentialState {
    secrets_offered: u32,
}

impl CredentialState {
    /// Decides what to offer for a question with the `allowed` kinds. `username_from_url` is the
    /// user named in the URL, if any.
    pub(crate) fn choose<'a>(
        &mut self,
        auth: &'a Auth,
        username_from_url: Option<&'a str>,
        allowed: CredentialType,
    ) -> Result<CredentialChoice<'a>, CredentialRefusal> {
        match auth {
            Auth::None => Err(CredentialRefusal::NoneConfigured),
            Auth::SshKey {
                username,
                private_key,
                passphrase,
            } => {
                let username = username
                    .as_deref()
                    .or(username_from_url)
                    .unwrap_or(DEFAULT_SSH_USERNAME);
                if allowed.contains(CredentialType::SSH_KEY) {
                    self.offer_secret()?;
                    Ok(CredentialChoice::SshKey {
                        username,
                        private_key,
                        passphrase: passphrase.as_deref(),
                    })
                } else if allowed.contains(CredentialType::USERNAME) {
                    Ok(CredentialChoice::Username(username))
                } else {
                    Err(CredentialRefusal::Unsupported { allowed })
                }
            }
            Auth::HttpsToken { username, token } => {
                if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                    self.offer_secret()?;
                    Ok(CredentialChoice::UserPass {
                        username,
                        password: token,
                    })
                } else {
                    Err(CredentialRefusal::Unsupported { allowed })
                }
            }
        }
    }

    fn offer_secret(&mut self) -> Result<(), CredentialRefusal> {
        if self.secrets_offered >= MAX_SECRET_OFFERS {
            return Err(CredentialRefusal::Rejected);
        }
        self.secrets_offered += 1;
        Ok(())
    }
}

/// The callback body for [`git2::RemoteCallbacks::credentials`].
pub(crate) fn answer_credentials(
    state: &mut CredentialState,
    auth: &Auth,
    username_from_url: Option<&str>,
    allowed: CredentialType,
) -> Result<Cred, git2::Error> {
    let choice = state
        .choose(auth, username_from_url, allowed)
        .map_err(|refusal| git2::Error::from_str(&refusal.to_string()))?;
    match choice {
        CredentialChoice::Username(username) => Cred::username(username),
        CredentialChoice::SshKey {
            username,
            private_key,
            passphrase,
        } => Cred::ssh_key(username, None, private_key, passphrase),
        CredentialChoice::UserPass { username, password } => {
            Cred::userpass_plaintext(username, password)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(username: Option<&str>) -> Auth {
        Auth::SshKey {
            username: username.map(str::to_string),
            private_key: PathBuf::from("/etc/fleet/id_ed25519"),
            passphrase: Some("hunter2".into()),
        }
    }

    #[test]
    fn anonymous_endpoint_refuses_any_question() {
        let mut state = CredentialState::default();
        for allowed in [
            CredentialType::USER_PASS_PLAINTEXT,
            CredentialType::SSH_KEY | CredentialType::USERNAME,
        ] {
            assert_eq!(
                state.choose(&Auth::None, None, allowed),
                Err(CredentialRefusal::NoneConfigured)
            );
        }
    }

    #[test]
    fn https_token_is_basic_auth_with_default_username() {
        let auth = Auth::https_token("s3cret");
        let mut state = CredentialState::default();
        assert_eq!(
            state.choose(&auth, Some("ignored"), CredentialType::USER_PASS_PLAINTEXT),
            Ok(CredentialChoice::UserPass {
                username: "x-access-token",
                password: "s3cret"
            })
        );
    }

    #[test]
    fn https_token_uses_configured_username_and_is_offered_once() {
        let auth = Auth::HttpsToken {
            username: "oauth2".into(),
            token: "t".into(),
        };
        let mut state = CredentialState::default();
        let allowed = CredentialType::USER_PASS_PLAINTEXT;
        assert_eq!(
            state.choose(&auth, None, allowed),
            Ok(CredentialChoice::UserPass {
                username: "oauth2",
                password: "t"
            })
        );
        assert_eq!(
            state.choose(&auth, None, allowed),
            Err(CredentialRefusal::Rejected)
        );
    }

    #[test]
    fn https_token_refuses_ssh_questions() {
        let mut state = CredentialState::default();
        let allowed = CredentialType::SSH_KEY;
        assert_eq!(
            state.choose(&Auth::https_token("t"), None, allowed),
            Err(CredentialRefusal::Unsupported { allowed })
        );
    }

    #[test]
    fn ssh_key_username_comes_from_config_then_url_then_default() {
        let allowed = CredentialType::SSH_KEY;
        let cases = [
            (Some("deploy"), Some("git"), "deploy"),
            (None, Some("fleet"), "fleet"),
            (None, None, "git"),
        ];
        for (configured, from_url, expected) in cases {
            let auth = ssh(configured);
            let choice = CredentialState::default().choose(&auth, from_url, allowed);
            assert_eq!(
                choice,
                Ok(CredentialChoice::SshKey {
                    username: expected,
                    private_key: Path::new("/etc/fleet/id_ed25519"),
                    passphrase: Some("hunter2"),
                }),
                "configured {configured:?}, from url {from_url:?}"
            );
        }
    }

    #[test]
    fn ssh_username_question_then_key_then_rejection() {
        let auth = ssh(None);
        let mut state = CredentialState::default();
        assert_eq!(
            state.choose(&auth, None, CredentialType::USERNAME),
            Ok(CredentialChoice::Username("git"))
        );
        assert!(matches!(
            state.choose(&auth, None, CredentialType::SSH_KEY),
            Ok(CredentialChoice::SshKey { .. })
        ));
        assert_eq!(
            state.choose(&auth, None, CredentialType::SSH_KEY),
            Err(CredentialRefusal::Rejected)
        );
    }

    #[test]
    fn ssh_key_refuses_password_questions() {
        let allowed = CredentialType::USER_PASS_PLAINTEXT;
        assert_eq!(
            CredentialState::default().choose(&ssh(None), None, allowed),
            Err(CredentialRefusal::Unsupported { allowed })
        );
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let endpoint = Endpoint::new("https://bot:pw@git.example/fleet.git")
            .with_auth(Auth::https_token("tok-123"));
        let shown = format!("{endpoint:?} {:?}", ssh(None));
        assert!(!shown.contains("tok-123"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(":pw@"), "{shown}");
    }

    #[test]
    fn redaction_hides_only_passwords() {
        let cases = [
            (
                "https://bot:pw@git.example/fleet.git",
                "https://bot:***@git.example/fleet.git",
            ),
            (
                "https://bot@git.example/fleet.git",
                "https://bot@git.example/fleet.git",
            ),
            (
                "git://127.0.0.1:9418/fleet.git",
                "git://127.0.0.1:9418/fleet.git",
            ),
            (
                "git@git.example:fleet/repo.git",
                "git@git.example:fleet/repo.git",
            ),
            ("ssh://u:p@host:22/a@b.git", "ssh://u:***@host:22/a@b.git"),
            ("/srv/git/fleet.git", "/srv/git/fleet.git"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }
}

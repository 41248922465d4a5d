//! Passwords the app keeps between runs, in the OS keyring.
//!
//! The app's saved settings are a plain file, so a service URL is saved
//! without its password ([`super::strip_password`]). A password the user typed
//! in the app goes to the OS keyring instead — Keychain on macOS, the
//! Credential Manager on Windows, the Secret Service (GNOME Keyring, KWallet)
//! on Linux and the BSDs — under the service `salespulse` and, as the account,
//! the URL without its password (exactly what the settings file holds). On
//! the next start that URL gets its password back from there.
//!
//! Where no keyring answers (a Linux box without a Secret Service, a locked
//! collection that cannot prompt), nothing is saved and the caller is told
//! why; the password then lives only in memory for this run.
//!
//! Every call may block (D-Bus, an unlock prompt): call them off the UI
//! thread.

use std::sync::Arc;

use keyring_core::{CredentialStore, Entry, Error};

use super::{redact_url, strip_password};

/// The service name of every entry.
const SERVICE: &str = "salespulse";

/// A place to keep passwords: the OS keyring, or one in memory (tests).
#[derive(Clone)]
pub struct Keyring {
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// The platform's store, set up on first use.
    Os,
    /// A store of this process.
    Memory(Arc<CredentialStore>),
    /// A store that could not be made.
    Broken(String),
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.source {
            Source::Os => "Keyring(OS)",
            Source::Memory(_) => "Keyring(in memory)",
            Source::Broken(_) => "Keyring(unavailable)",
        })
    }
}

impl Default for Keyring {
    fn default() -> Self {
        Self::os()
    }
}

impl Keyring {
    /// The OS keyring. Nothing is opened here: the platform store is set up
    /// (once per process) on first use.
    pub fn os() -> Self {
        Self { source: Source::Os }
    }

    /// A keyring that lives in this process only (tests, benches).
    pub fn in_memory() -> Self {
        let source = match keyring_core::mock::Store::new() {
            Ok(s) => Source::Memory(s),
            Err(e) => Source::Broken(describe(&e)),
        };
        Self { source }
    }

    fn store(&self) -> Result<Arc<CredentialStore>, String> {
        match &self.source {
            Source::Memory(s) => Ok(Arc::clone(s)),
            Source::Broken(e) => Err(e.clone()),
            Source::Os => match keyring::Entry::store_status() {
                Ok(()) => keyring_core::get_default_store()
                    .ok_or_else(|| "the OS keyring was set up but is not there".to_owned()),
                Err(e) => Err(format!(
                    "no OS keyring is available ({}){}",
                    describe(e),
                    if cfg!(all(unix, not(target_os = "macos"))) {
                        "; on Linux one needs a Secret Service such as GNOME Keyring or KWallet"
                    } else {
                        ""
                    }
                )),
            },
        }
    }

    fn entry(&self, account: &str) -> Result<Entry, String> {
        let store = self.store()?;
        Entry::new_in_store(&store, SERVICE, account).map_err(|e| describe(&e))
    }

    /// Keeps the password of `url` under the URL without it. `Ok(false)`
    /// when `url` holds no password (nothing to keep).
    pub fn remember(&self, url: &str) -> Result<bool, String> {
        let Some((account, password)) = split(url) else {
            return Ok(false);
        };
        self.entry(&account)?
            .set_password(&password)
            .map_err(|e| describe(&e))?;
        Ok(true)
    }

    /// `url` with the password kept for it filled in: `Ok(None)` when `url`
    /// already has one or none was kept. (A Redis URL may hold a password
    /// without a user: `redis://:pw@host` is kept as `redis://host`.)
    pub fn recall(&self, url: &str) -> Result<Option<String>, String> {
        let Ok(mut parsed) = url::Url::parse(url) else {
            return Ok(None);
        };
        if !parsed.has_host() || parsed.password().is_some() {
            return Ok(None);
        }
        match self.entry(url)?.get_password() {
            Ok(pw) => {
                // The URL parser percent-encodes what userinfo cannot hold.
                if parsed.set_password(Some(&pw)).is_err() {
                    return Err(format!("cannot put the kept password into {url}"));
                }
                Ok(Some(parsed.to_string()))
            }
            Err(Error::NoEntry) => Ok(None),
            Err(e) => Err(describe(&e)),
        }
    }

    /// Removes what was kept for `url` (with or without its password); true
    /// when there was something.
    pub fn forget(&self, url: &str) -> Result<bool, String> {
        let account = strip_password(url);
        match self.entry(&account)?.delete_credential() {
            Ok(()) => Ok(true),
            Err(Error::NoEntry) => Ok(false),
            Err(e) => Err(describe(&e)),
        }
    }
}

/// `url` as (account, decoded password), when it has a password.
fn split(url: &str) -> Option<(String, String)> {
    let parsed = url::Url::parse(url).ok()?;
    let pw = parsed.password()?;
    let decoded = percent_encoding::percent_decode_str(pw)
        .decode_utf8_lossy()
        .into_owned();
    Some((strip_password(url), decoded))
}

/// A keyring error in one line, without any secret (none of the errors
/// carries a password; the decoding ones carry bytes, which are left out).
fn describe(e: &Error) -> String {
    match e {
        Error::BadEncoding(_) => "the kept password is not UTF-8".to_owned(),
        Error::BadDataFormat(_, inner) => format!("the kept password is unreadable: {inner}"),
        other => {
            let text = other.to_string();
            // Store errors may quote an account, i.e. a URL: keep it redacted.
            redact_url(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_kept_password_comes_back_on_the_url_the_settings_file_holds() {
        let k = Keyring::in_memory();
        let typed = "postgres://sales:p%2F%3F%23%40w%20d@db.example:5432/shop?sslmode=require";
        assert!(k.remember(typed).unwrap());
        let saved = strip_password(typed);
        assert!(!saved.contains("p%2F"), "{saved}");
        let back = k.recall(&saved).unwrap().expect("kept");
        assert_eq!(split(&back).unwrap().1, "p/?#@w d");
        assert_eq!(strip_password(&back), saved);
        // A URL that already has a password, or no user, is left alone.
        assert_eq!(k.recall(typed).unwrap(), None);
        assert_eq!(k.recall("redis://127.0.0.1:6379").unwrap(), None);
        // A Redis password without a user.
        assert!(k.remember("redis://:r%2Fpw@cache:6380/0").unwrap());
        assert_eq!(
            k.recall("redis://cache:6380/0").unwrap().as_deref(),
            Some("redis://:r%2Fpw@cache:6380/0")
        );
        // Another URL has nothing kept.
        assert_eq!(k.recall("postgres://sales@other:5432/shop").unwrap(), None);
        // Nothing to keep without a password.
        assert!(!k.remember("postgres://sales@db.example/shop").unwrap());
        assert!(k.forget(typed).unwrap());
        assert_eq!(k.recall(&saved).unwrap(), None);
        assert!(!k.forget(typed).unwrap());
    }

    #[test]
    fn passwords_with_any_character_round_trip() {
        let k = Keyring::in_memory();
        for pw in ["plain", "p/?#@:% x", "ünï"] {
            let mut u = url::Url::parse("postgres://u@h/db").unwrap();
            u.set_password(Some(pw)).unwrap();
            assert!(k.remember(u.as_str()).unwrap());
            let back = k.recall("postgres://u@h/db").unwrap().unwrap();
            assert_eq!(split(&back).unwrap().1, pw);
        }
        // An empty password is no password: nothing to keep.
        assert!(!k.remember("postgres://u:@h/db").unwrap());
    }
}

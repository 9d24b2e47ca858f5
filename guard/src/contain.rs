//! Containing a panic in code that reads operator input (config text, the files it names), so a
//! bug in a parser refuses that input instead of ending the daemon.
//!
//! Our own checks run before any third-party parser sees a value, but a library can still panic
//! on input we did not foresee (tracing-subscriber's filter parser did). `contain` turns such a
//! panic into an error. While it runs, the panic hook stays quiet on that thread: a parser's panic
//! message can quote its input, and config values can be secrets, so only the location is kept.
//! Panics elsewhere (other threads, other code) still print in full.
//!
//! This relies on panics unwinding: no profile of the workspace sets `panic = "abort"`.

use std::{
    cell::{Cell, RefCell},
    panic::{self, AssertUnwindSafe},
    sync::Once,
};

/// A panic that `contain` caught.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a parser panicked at {location} (a bug in proxyguard or a library it uses; please report it, with the input minus its secrets)")]
pub struct Panicked {
    /// `file:line:column` of the panic, or "an unknown place".
    pub location: String,
}

thread_local! {
    /// Set while `contain` runs on this thread.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
    /// Where the last contained panic on this thread happened.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`. A panic inside it is returned as `Err`, printed nowhere; the caller reports it.
///
/// `f` may leave what it was changing half done when it panics (the reload's callers keep the
/// previous config, and the next good reload rewrites all of it).
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    install_hook();
    let outer = CONTAINED.replace(true);
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.set(outer);
    outcome.map_err(|_| Panicked {
        location: LOCATION
            .take()
            .unwrap_or_else(|| "an unknown place".to_owned()),
    })
}

/// Wraps the current hook once: quiet inside `contain`, unchanged everywhere else.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CONTAINED.get() {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                LOCATION.set(location);
            } else {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_location_only() {
        let secret = "sk-very-secret";
        let err = contain(|| -> u32 { panic!("bad input {secret}") }).unwrap_err();
        assert!(err.location.contains("contain.rs:"), "{err}");
        assert!(!err.to_string().contains(secret), "{err}");
    }

    #[test]
    fn values_pass_through_and_nesting_restores_the_outer_state() {
        assert_eq!(contain(|| 7), Ok(7));
        let outer = contain(|| {
            let inner = contain(|| -> () { panic!("inner") });
            assert!(inner.is_err());
            assert!(CONTAINED.get(), "still inside the outer contain");
            1
        });
        assert_eq!(outer, Ok(1));
        assert!(!CONTAINED.get());
    }

    /// The input from issue #19, and the smallest one that panics (white space, a letter of two
    /// bytes, a delimiter). Whether or not tracing-subscriber still panics on them, `contain`
    /// returns; our own check refuses them before they get there in the daemon.
    #[test]
    fn the_filter_parser_crash_is_contained() {
        for input in ["\tב[", " é="] {
            let outcome = contain(|| input.parse::<tracing_subscriber::EnvFilter>().is_ok());
            assert_ne!(outcome, Ok(true), "{input:?} is not a valid filter");
            if let Err(panicked) = outcome {
                assert!(panicked.location.contains("directive.rs"), "{panicked}");
            }
        }
    }
}

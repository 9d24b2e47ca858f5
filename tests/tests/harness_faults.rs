//! The harness fails the test that owns a daemon when it cannot read that daemon's output: a
//! reader thread that stops on a bad line must not just leave the test waiting for events.
//! Not a `kernel_` test: the daemon runs with `--no-kernel`.

use proxyguard_tests::Daemon;

/// A config with its own `[log]` table keeps the default text format, which is not the JSON the
/// harness reads: starting must fail at once with the offending line, not time out.
#[test]
#[should_panic(expected = "non-JSON line on stdout")]
fn a_text_line_on_stdout_fails_the_owning_test() {
    Daemon::start_with_args("[log]\nformat = \"text\"\n", &["--no-kernel"]);
}

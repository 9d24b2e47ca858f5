//! Test counts from libtest's output: its summary lines (`test result: ok. 3 passed; 0 failed;
//! 1 ignored; …`) and the harness's skip markers (`SKIPPED: <test>: <why>; covered by <where>`,
//! printed by `proxyguard_tests::feature_or_skip`).
//!
//! libtest counts a skipped test as passed, so a skip is moved from passed to skipped, and only
//! once the test it names has finished `ok`: a test that skips one check and then fails another
//! stays a failure. The marker is written to the test binary's stdout, so it comes before that
//! test's outcome and its binary's summary line on the same stream (natively and on the VM's
//! serial console alike).

/// The prefix of a skip marker line.
pub const SKIP_MARK: &str = "SKIPPED: ";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Tests that ran all their checks and passed.
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Tests that passed, but skipped a check this host cannot make (they said why and where it runs).
    pub skipped: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.skipped += other.skipped;
    }
}

/// Reads output lines into [`Counts`].
#[derive(Debug, Default)]
pub struct Scanner {
    counts: Counts,
    /// Tests that printed a skip marker and have not finished yet.
    marked: Vec<String>,
    /// The test whose `test NAME ... ` line is still waiting for its outcome (output between).
    open: Option<String>,
    /// Skipped tests that finished `ok` since the last summary line (which counts them as passed).
    settled: u64,
}

impl Scanner {
    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn scan(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(SKIP_MARK) {
            if let Some((name, _why)) = rest.split_once(": ") {
                self.marked.push(name.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            self.summary(rest);
        } else if let Some((name, outcome)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ..."))
        {
            match outcome.trim() {
                // Its outcome comes on a later line, after what the test printed.
                "" => self.open = Some(name.to_owned()),
                outcome => self.outcome(name.to_owned(), outcome),
            }
        } else if let Some(name) = self.open.take() {
            match line {
                "ok" | "FAILED" => self.outcome(name, line),
                // Output of the open test: it is still open.
                _ => self.open = Some(name),
            }
        }
    }

    fn outcome(&mut self, name: String, outcome: &str) {
        self.open = None;
        if let Some(at) = self.marked.iter().position(|marked| *marked == name) {
            self.marked.swap_remove(at);
            if outcome == "ok" {
                self.settled += 1;
            }
        }
    }

    fn summary(&mut self, rest: &str) {
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(number), Some(label)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => {
                    let skipped = self.settled.min(number);
                    self.counts.passed += number - skipped;
                    self.counts.skipped += skipped;
                    self.settled = 0;
                }
                "failed" => self.counts.failed += number,
                "ignored" => self.counts.ignored += number,
                _ => {}
            }
        }
        // Markers of tests that never finished (the binary crashed) count for nothing.
        self.marked.clear();
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(lines: &str) -> Counts {
        let mut scanner = Scanner::default();
        for line in lines.lines() {
            scanner.scan(line);
        }
        scanner.counts()
    }

    #[test]
    fn sums_summary_lines_and_ignores_others() {
        let counts = scan(
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
             test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             test bind::denies ... ok\n\
             running 3 tests\n",
        );
        assert_eq!(
            counts,
            Counts {
                passed: 5,
                failed: 1,
                ignored: 1,
                skipped: 0
            }
        );
    }

    /// What a `--test-threads=1` run prints (the marker lands between a test's name and its
    /// outcome): one test skips a check and passes, one skips and then fails, one just passes.
    #[test]
    fn a_skip_moves_from_passed_to_skipped_only_when_its_test_passed() {
        let counts = scan(
            "running 4 tests\n\
             test bpf_lsm_programs_load ... \n\
             SKIPPED: bpf_lsm_programs_load: needs BPF LSM, which this host refuses (no lsm=bpf); covered by the VM stage\n\
             ok\n\
             test environ_read_denied ... \n\
             SKIPPED: environ_read_denied: needs BPF LSM, which this host refuses (x); covered by the VM stage\n\
             FAILED\n\
             test features_listed ... ok\n\
             test other ... ok\n\
             \n\
             test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             running 1 test\n\
             test bpf_lsm_programs_load ... ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
        );
        assert_eq!(
            counts,
            Counts {
                passed: 3,
                failed: 1,
                ignored: 0,
                skipped: 1
            }
        );
    }

    /// With several test threads the outcome line is whole and comes after the marker.
    #[test]
    fn a_skip_is_matched_by_name_in_parallel_output() {
        let counts = scan(
            "SKIPPED: m::b: needs X, which this host refuses (y); covered by the VM stage\n\
             test m::a ... ok\n\
             test m::b ... ok\n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
        );
        assert_eq!((counts.passed, counts.skipped), (1, 1));
    }

    #[test]
    fn the_sum_of_stages_keeps_skips_apart() {
        let mut total = Counts::default();
        total.add(Counts {
            passed: 2,
            failed: 0,
            ignored: 1,
            skipped: 1,
        });
        total.add(Counts {
            passed: 3,
            failed: 1,
            ignored: 0,
            skipped: 0,
        });
        assert_eq!(
            total,
            Counts {
                passed: 5,
                failed: 1,
                ignored: 1,
                skipped: 1
            }
        );
    }
}

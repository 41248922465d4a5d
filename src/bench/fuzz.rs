//! A mutational fuzzer for what ingest does with untrusted bytes, on stable
//! Rust (cargo-fuzz needs nightly): [`Event::decode`] and the `COPY` encoder.
//!
//! Inputs start from generated events and hand-made edge cases, then are
//! mutated at the byte level (bit flips, interesting bytes, inserts,
//! deletes, splices) and at the JSON level (a field replaced by an
//! interesting value, removed, or a value nested deep). For every input:
//! - decoding never panics;
//! - an accepted event survives a JSON round trip unchanged;
//! - its `COPY` row is one line with one field per column, no NUL byte, only
//!   the escapes the text format defines, and money within `numeric(12,2)`.
//!
//! `salespulse bench fuzz` runs it (10 M inputs by default) and prints the
//! count and inputs per second; a test runs a smaller number.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::Value;

use crate::event::{Event, Rejection, DEFAULT_MAX_FUTURE_SKEW, MAX_LINE_CENTS};
use crate::generator::{Clock, Generator, GeneratorParams};
use crate::store::{Batch, CopyRows, SESSION_COLUMNS, TRANSACTION_COLUMNS};

/// What to fuzz.
#[derive(Clone, Debug)]
pub struct FuzzOptions {
    /// Inputs to try, over all threads.
    pub inputs: u64,
    /// Seed of the mutations (each thread derives its own).
    pub seed: u64,
    /// Threads (0: one per core).
    pub threads: usize,
}

/// What a fuzz run found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FuzzReport {
    /// Inputs tried.
    pub inputs: u64,
    /// Inputs decoded and valid.
    pub accepted: u64,
    /// Inputs that were not JSON events.
    pub undecodable: u64,
    /// Inputs that decoded but broke a rule.
    pub invalid: u64,
    /// Inputs on which decoding or encoding panicked.
    pub panics: u64,
    /// Broken properties, at most 20, each with its input (escaped).
    pub failures: Vec<String>,
    /// Inputs per second, over all threads.
    pub inputs_per_sec: f64,
    /// Wall time, in seconds.
    pub seconds: f64,
    /// Threads used.
    pub threads: usize,
}

impl FuzzReport {
    /// Whether every property held on every input.
    pub fn clean(&self) -> bool {
        self.panics == 0 && self.failures.is_empty()
    }

    fn merge(&mut self, o: FuzzReport) {
        self.inputs += o.inputs;
        self.accepted += o.accepted;
        self.undecodable += o.undecodable;
        self.invalid += o.invalid;
        self.panics += o.panics;
        for f in o.failures {
            if self.failures.len() < 20 {
                self.failures.push(f);
            }
        }
    }
}

impl fmt::Display for FuzzReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fuzzed {} inputs in {:.1} s on {} thread(s): {:.0} inputs/s",
            self.inputs, self.seconds, self.threads, self.inputs_per_sec
        )?;
        writeln!(
            f,
            "  accepted {}, invalid {}, undecodable {}",
            self.accepted, self.invalid, self.undecodable
        )?;
        writeln!(
            f,
            "  panics {}, broken properties {}",
            self.panics,
            self.failures.len()
        )?;
        for x in &self.failures {
            writeln!(f, "  - {x}")?;
        }
        Ok(())
    }
}

/// The instant decoding is judged at: fixed, so a run is reproducible.
fn fuzz_now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// Seed inputs: generated events near `fuzz_now`, and edge cases.
fn corpus() -> Vec<Vec<u8>> {
    let start = fuzz_now() - chrono::Duration::hours(2);
    let mut out: Vec<Vec<u8>> = Vec::new();
    if let Ok(mut g) = Generator::new(GeneratorParams::builtin(), 7, Clock::Simulated(start)) {
        for _ in 0..200 {
            out.push(g.next_event().to_json());
        }
    }
    for raw in [
        &b""[..],
        b"{}",
        b"null",
        b"[]",
        b"{\"type\":\"sale\"}",
        b"{\"type\":\"session\"}",
        b"\"\\u0000\"",
        b"{\"type\":\"sale\",\"quantity\":1e400}",
    ] {
        out.push(raw.to_vec());
    }
    out
}

const INTERESTING_BYTES: &[u8] = b"\0\x01\x7f\xff\"\\{}[],:-.0123456789eE \t\n\r";

fn interesting_value(rng: &mut ChaCha8Rng) -> Value {
    let long = |n: usize, c: &str| Value::String(c.repeat(n));
    match rng.random_range(0..34) {
        0 => Value::Null,
        1 => Value::Bool(true),
        2 => Value::String(String::new()),
        3 => Value::String("Books\u{0}Evil".into()),
        4 => Value::String("line\nbreak".into()),
        5 => Value::String("tab\there\\back".into()),
        6 => long(64, "x"),
        7 => long(65, "x"),
        8 => long(256, "é"),
        9 => long(20_000, "z"),
        10 => Value::String("\u{202e}ǅ😀".into()),
        11 => Value::from(0),
        12 => Value::from(-1),
        13 => Value::from(10_000),
        14 => Value::from(10_001),
        15 => Value::from(1_000_000.0),
        16 => Value::from(999_999.99),
        17 => Value::from(9_999_999_999.99),
        18 => Value::from(9_999_999_999.995),
        19 => Value::from(1e10),
        20 => Value::from(1.7976931348623157e308),
        21 => Value::from(i64::MAX),
        22 => Value::from(i64::MIN),
        23 => Value::from(0.005),
        24 => Value::from(5e-324),
        25 => Value::String("2026-11-20T12:04:59Z".into()),
        26 => Value::String("2026-11-21T11:00:00Z".into()),
        27 => Value::String("1999-12-31T23:59:59Z".into()),
        28 => Value::String("+262142-12-31T23:59:59Z".into()),
        29 => Value::String("00000000-0000-0000-0000-000000000000".into()),
        30 => Value::Array(vec![Value::from(1); 3]),
        31 => {
            let mut v = Value::from(1);
            for _ in 0..rng.random_range(1..200) {
                v = Value::Array(vec![v]);
            }
            v
        }
        32 => {
            let words = ["completed", "web", "EUR", "DE", "credit_card", "refunded"];
            Value::String((*pick(&words, rng).unwrap_or(&"")).to_owned())
        }
        _ => Value::from(rng.random_range(-1e6..1e11)),
    }
}

/// One of `items` at random (`None` when there are none).
fn pick<'a, T>(items: &'a [T], rng: &mut ChaCha8Rng) -> Option<&'a T> {
    items.get(rng.random_range(0..items.len().max(1)))
}

/// One JSON-level mutation, or `None` when `input` is not a JSON object.
fn mutate_json(input: &[u8], rng: &mut ChaCha8Rng) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(input).ok()?;
    let obj = v.as_object_mut()?;
    let keys: Vec<String> = obj.keys().cloned().collect();
    match rng.random_range(0..10) {
        0 if !keys.is_empty() => {
            if let Some(k) = pick(&keys, rng) {
                obj.remove(k);
            }
        }
        1 => {
            obj.insert("unexpected".into(), interesting_value(rng));
        }
        2 => {
            obj.insert(
                "type".into(),
                Value::String(
                    (*pick(&["sale", "session", "refund", ""], rng).unwrap_or(&"")).into(),
                ),
            );
        }
        _ if !keys.is_empty() => {
            if let Some(k) = pick(&keys, rng).cloned() {
                obj.insert(k, interesting_value(rng));
            }
        }
        _ => return None,
    }
    serde_json::to_vec(&v).ok()
}

/// One byte-level mutation.
fn mutate_bytes(input: &mut Vec<u8>, other: &[u8], rng: &mut ChaCha8Rng) {
    let len = input.len();
    match rng.random_range(0..7) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            if let Some(b) = input.get_mut(i) {
                *b ^= 1 << rng.random_range(0..8);
            }
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            let b = pick(INTERESTING_BYTES, rng).copied().unwrap_or(0);
            if let Some(x) = input.get_mut(i) {
                *x = b;
            }
        }
        2 => {
            let i = rng.random_range(0..=len);
            let n = rng.random_range(1..8);
            for _ in 0..n {
                input.insert(i.min(input.len()), rng.random());
            }
        }
        3 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 16));
            input.drain(a..b);
        }
        4 if len > 0 => {
            input.truncate(rng.random_range(0..len));
        }
        5 if !other.is_empty() => {
            // Splice: our head, the other's tail.
            let a = rng.random_range(0..=len);
            let b = rng.random_range(0..other.len());
            input.truncate(a);
            input.extend_from_slice(other.get(b..).unwrap_or_default());
        }
        _ => {
            let i = rng.random_range(0..=len);
            let b = pick(INTERESTING_BYTES, rng).copied().unwrap_or(0);
            input.insert(i, b);
        }
    }
}

/// The next input: a corpus entry with one to four mutations.
fn next_input(corpus: &[Vec<u8>], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let pick = |rng: &mut ChaCha8Rng| rng.random_range(0..corpus.len().max(1));
    let mut input = corpus.get(pick(rng)).cloned().unwrap_or_default();
    let other = corpus.get(pick(rng)).cloned().unwrap_or_default();
    for _ in 0..rng.random_range(1..=4) {
        if rng.random_bool(0.5) {
            if let Some(m) = mutate_json(&input, rng) {
                input = m;
                continue;
            }
        }
        mutate_bytes(&mut input, &other, rng);
    }
    input
}

/// Undoes the `COPY` text escaping of one field; `None` on an escape the
/// format does not define (or a NUL byte).
fn unescape_copy_field(f: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(f.len());
    let mut it = f.iter();
    while let Some(&b) = it.next() {
        match b {
            0 | b'\t' | b'\n' | b'\r' => return None,
            b'\\' => match it.next()? {
                b'\\' => out.push(b'\\'),
                b't' => out.push(b'\t'),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                _ => return None,
            },
            _ => out.push(b),
        }
    }
    Some(out)
}

/// Checks the `COPY` rows of one accepted event; the first broken property.
fn check_copy(event: &Event) -> Result<(), String> {
    let mut batch = Batch::default();
    match event.clone() {
        Event::Sale(s) => batch.sales.push((s, 0, 0)),
        Event::Session(s) => batch.sessions.push((s, 0, 0)),
    }
    let rows = CopyRows::of(&batch);
    let (data, columns) = match event {
        Event::Sale(_) => (&rows.transactions, TRANSACTION_COLUMNS),
        Event::Session(_) => (&rows.sessions, SESSION_COLUMNS),
    };
    let want = columns.split(',').count();
    let line = data
        .strip_suffix(b"\n")
        .ok_or("COPY row does not end with a newline")?;
    if line.contains(&b'\n') {
        return Err("COPY row spans several lines".into());
    }
    let fields: Vec<&[u8]> = line.split(|b| *b == b'\t').collect();
    if fields.len() != want {
        return Err(format!(
            "COPY row has {} fields, {want} columns",
            fields.len()
        ));
    }
    for (i, f) in fields.iter().enumerate() {
        if unescape_copy_field(f).is_none() {
            return Err(format!("COPY field {i} has a NUL or an undefined escape"));
        }
    }
    if let Event::Sale(_) = event {
        // unit_price, discount, total_amount: columns 7, 8, 9.
        for i in 7..=9 {
            let f = fields.get(i).copied().unwrap_or_default();
            let text = std::str::from_utf8(f).map_err(|_| "money field is not UTF-8")?;
            let cents = parse_cents(text).ok_or_else(|| format!("money field {text:?}"))?;
            if cents > MAX_LINE_CENTS {
                return Err(format!("money {text} exceeds numeric(12,2)"));
            }
        }
    }
    Ok(())
}

fn parse_cents(s: &str) -> Option<i64> {
    let (whole, frac) = s.split_once('.')?;
    if frac.len() != 2 || whole.starts_with('-') {
        return None;
    }
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(frac.parse().ok()?)
}

/// Runs one input; `Err` names a broken property.
fn check(input: &[u8]) -> Result<Result<(), Rejection>, String> {
    match Event::decode_with(input, fuzz_now(), DEFAULT_MAX_FUTURE_SKEW) {
        Err(r) => Ok(Err(r)),
        Ok(e) => {
            let again = Event::decode_with(&e.to_json(), fuzz_now(), DEFAULT_MAX_FUTURE_SKEW);
            if again.as_ref() != Ok(&e) {
                return Err(format!("JSON round trip changed the event: {again:?}"));
            }
            check_copy(&e)?;
            Ok(Ok(()))
        }
    }
}

fn escaped(input: &[u8]) -> String {
    let s: String = input
        .iter()
        .take(300)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if input.len() > 300 {
        format!("{s}… ({} bytes)", input.len())
    } else {
        s
    }
}

fn run_thread(corpus: &[Vec<u8>], inputs: u64, seed: u64) -> FuzzReport {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = FuzzReport::default();
    for _ in 0..inputs {
        let input = next_input(corpus, &mut rng);
        r.inputs += 1;
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(Ok(Ok(()))) => r.accepted += 1,
            Ok(Ok(Err(Rejection::Undecodable(_)))) => r.undecodable += 1,
            Ok(Ok(Err(Rejection::Invalid(_)))) => r.invalid += 1,
            Ok(Err(broken)) => {
                if r.failures.len() < 20 {
                    r.failures
                        .push(format!("{broken}; input: {}", escaped(&input)));
                }
            }
            Err(_) => {
                r.panics += 1;
                if r.failures.len() < 20 {
                    r.failures
                        .push(format!("panic; input: {}", escaped(&input)));
                }
            }
        }
    }
    r
}

/// Runs the fuzzer; see the module docs.
pub fn run(opts: &FuzzOptions) -> FuzzReport {
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .max(1);
    let corpus = corpus();
    // A panic is counted, not printed with a backtrace per input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let share = opts.inputs / threads as u64;
    let mut report = FuzzReport::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let n = if i == 0 {
                    opts.inputs - share * (threads as u64 - 1)
                } else {
                    share
                };
                let corpus = &corpus;
                let seed = opts
                    .seed
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .wrapping_add(i as u64);
                s.spawn(move || run_thread(corpus, n, seed))
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => report.merge(r),
                Err(_) => report.panics += 1,
            }
        }
    });
    std::panic::set_hook(hook);
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    report.seconds = elapsed.as_secs_f64();
    report.inputs_per_sec = report.inputs as f64 / report.seconds;
    report.threads = threads;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_unescape_rejects_undefined_escapes() {
        assert_eq!(unescape_copy_field(b"a\\tb"), Some(b"a\tb".to_vec()));
        assert_eq!(unescape_copy_field(b"a\\x"), None);
        assert_eq!(unescape_copy_field(b"a\0"), None);
        assert_eq!(parse_cents("12.34"), Some(1234));
        assert_eq!(parse_cents("12.3"), None);
    }
}

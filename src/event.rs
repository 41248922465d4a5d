//! The wire model: what travels on the `sales-events` topic.
//!
//! Two event types share the topic, tagged by `"type"`:
//! - `sale`: one order line (a product, a quantity, a payment, a status);
//! - `session`: emitted once when a shopping session ends, whether or not it
//!   converted. Conversion is then `orders ÷ sessions`, computed from exact
//!   counts of both, with no join on session ids.
//!
//! Closed vocabularies (status, channel) keep unknown values instead of failing
//! to decode, so that [`Event::validate`] can report them together with every
//! other problem in the same record.

use std::fmt;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Longest id (customer, session, product) accepted.
pub(crate) const MAX_ID_LEN: usize = 64;
/// Longest free-text field (product name) accepted.
pub(crate) const MAX_TEXT_LEN: usize = 256;
/// Largest quantity in one order line.
pub(crate) const MAX_QUANTITY: i32 = 10_000;
/// Largest unit price accepted.
pub(crate) const MAX_UNIT_PRICE: f64 = 1_000_000.0;
/// Largest amount of one order line, in cents: what `numeric(12,2)` holds
/// (9,999,999,999.99). The gross amount (quantity × unit price), the discount
/// and the total must each fit, after rounding to cents.
pub(crate) const MAX_LINE_CENTS: i64 = 999_999_999_999;
/// Default allowance for clocks ahead of ours: how far in the future an event
/// may be stamped (see [`Event::decode_with`] for a configured one).
pub(crate) const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::minutes(5);

/// One record on the topic: a sale or a session, tagged by `"type"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An order line (`"type": "sale"`).
    Sale(SaleEvent),
    /// A finished shopping session, converted or not (`"type": "session"`).
    Session(SessionEvent),
}

/// One order line: a product, a quantity, a payment and a status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaleEvent {
    /// Unique id of the line (primary key of `transactions`); never the nil UUID.
    pub transaction_id: Uuid,
    /// When the order was placed (UTC); the event's timestamp.
    pub occurred_at: DateTime<Utc>,
    /// Who ordered; also the partitioning key. At most [`MAX_ID_LEN`] bytes.
    pub customer_id: String,
    /// The session the order was placed in. At most [`MAX_ID_LEN`] bytes.
    pub session_id: String,
    /// The product ordered. At most [`MAX_ID_LEN`] bytes.
    pub product_id: String,
    /// The product's display name. At most [`MAX_TEXT_LEN`] bytes.
    pub product_name: String,
    /// The product's category. At most [`MAX_ID_LEN`] bytes.
    pub category: String,
    /// Units ordered, from 1 to [`MAX_QUANTITY`].
    pub quantity: i32,
    /// Price of one unit in `currency`, at most [`MAX_UNIT_PRICE`].
    pub unit_price: f64,
    /// Amount taken off the line in `currency` (not a fraction); at most
    /// `quantity × unit_price`.
    pub discount: f64,
    /// What the line costs: `quantity × unit_price − discount`, within a cent.
    pub total_amount: f64,
    /// ISO 4217 code of the amounts (three uppercase letters, e.g. `USD`).
    pub currency: String,
    /// How the customer paid (e.g. `credit_card`, `paypal`); at most 32 bytes.
    pub payment_method: String,
    /// How the order ended.
    pub status: Status,
    /// The customer's region (e.g. `Europe`).
    pub region: String,
    /// The customer's country, an ISO 3166-1 alpha-2 code (e.g. `DE`).
    pub country: String,
    /// Where the order was placed.
    pub channel: Channel,
}

/// A shopping session, emitted once when it ends, whether or not it converted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// Unique id of the session (primary key of `sessions`). At most [`MAX_ID_LEN`] bytes.
    pub session_id: String,
    /// Whose session it was; also the partitioning key.
    pub customer_id: String,
    /// When the session began (UTC).
    pub started_at: DateTime<Utc>,
    /// When the session ended (UTC), not before `started_at`; the event's timestamp.
    pub ended_at: DateTime<Utc>,
    /// The customer's region (e.g. `Europe`).
    pub region: String,
    /// The customer's country, an ISO 3166-1 alpha-2 code (e.g. `DE`).
    pub country: String,
    /// Where the session took place.
    pub channel: Channel,
    /// Pages viewed during the session, 0 to 10,000.
    pub page_views: i32,
    /// Number of orders (sale events) placed in this session.
    pub orders: i32,
}

/// A closed vocabulary that keeps unknown values for validation to report.
macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                /// A known value; [`Self::as_str`] gives its wire text.
                $variant,
            )+
            /// A value outside the vocabulary; invalid, kept for the error message.
            Unknown(String),
        }

        impl $name {
            /// Every known value, in declaration order (without `Unknown`).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's wire text; an unknown value's own text.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Unknown(s) => s,
                }
            }

            /// The value with wire text `s`; any other text becomes `Unknown`. Never fails.
            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => $name::$variant,)+
                    other => $name::Unknown(other.to_owned()),
                }
            }

            /// Whether the value is in the vocabulary (not `Unknown`).
            pub(crate) fn is_known(&self) -> bool {
                !matches!(self, $name::Unknown(_))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok($name::parse(&s))
            }
        }
    };
}

vocabulary!(
    /// Order status.
    Status {
        Completed => "completed",
        Pending => "pending",
        Failed => "failed",
        Refunded => "refunded",
    }
);

vocabulary!(
    /// Sales channel.
    Channel {
        Web => "web",
        Mobile => "mobile",
        Store => "store",
    }
);

/// One reason an event is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Name of the offending field, as on the wire (e.g. `"quantity"`).
    pub field: &'static str,
    /// What is wrong with it, for people.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a record could not be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The payload is not a JSON event; holds the decoder's error.
    #[error("undecodable: {0}")]
    Undecodable(String),
    /// The event decoded but breaks the rules; holds every violation found.
    #[error("invalid: {}", join_violations(.0))]
    Invalid(Vec<Violation>),
}

impl Rejection {
    /// Short machine-readable kind, used as a DLQ header.
    ///
    /// Ingest adds two kinds of its own for records that decode and validate
    /// but are refused later: `rejected-by-database` and `conflicting-duplicate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Undecodable(_) => "undecodable",
            Rejection::Invalid(_) => "invalid",
        }
    }
}

fn join_violations(v: &[Violation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Event {
    /// Decodes and validates a record payload, returning every reason it is
    /// rejected. Never panics, whatever the bytes.
    pub fn decode(payload: &[u8], now: DateTime<Utc>) -> Result<Event, Rejection> {
        Self::decode_with(payload, now, DEFAULT_MAX_FUTURE_SKEW)
    }

    /// [`Event::decode`] allowing timestamps up to `max_skew` past `now`.
    pub(crate) fn decode_with(
        payload: &[u8],
        now: DateTime<Utc>,
        max_skew: Duration,
    ) -> Result<Event, Rejection> {
        let event: Event =
            serde_json::from_slice(payload).map_err(|e| Rejection::Undecodable(e.to_string()))?;
        let violations = event.validate_with(now, max_skew);
        if violations.is_empty() {
            Ok(event)
        } else {
            Err(Rejection::Invalid(violations))
        }
    }

    /// The event as JSON bytes, as sent on the topic.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The partitioning key: all of a customer's events land on one partition.
    pub fn customer_id(&self) -> &str {
        match self {
            Event::Sale(s) => &s.customer_id,
            Event::Session(s) => &s.customer_id,
        }
    }

    /// When the event happened: a sale's `occurred_at`, a session's `ended_at`.
    pub fn timestamp(&self) -> DateTime<Utc> {
        match self {
            Event::Sale(s) => s.occurred_at,
            Event::Session(s) => s.ended_at,
        }
    }

    /// Every reason this event is invalid; empty when it is valid.
    ///
    /// Validation covers everything the database enforces, so that a valid
    /// event is always accepted by PostgreSQL: no control characters (NUL
    /// included) in any text, every length within its limit, every amount
    /// within `numeric(12,2)`, timestamps between 2000-01-01 and `now` plus
    /// the skew allowance ([`DEFAULT_MAX_FUTURE_SKEW`]).
    pub fn validate(&self, now: DateTime<Utc>) -> Vec<Violation> {
        self.validate_with(now, DEFAULT_MAX_FUTURE_SKEW)
    }

    /// [`Event::validate`] with a configured future-skew allowance.
    pub(crate) fn validate_with(&self, now: DateTime<Utc>, max_skew: Duration) -> Vec<Violation> {
        let mut v = Checks {
            found: Vec::new(),
            max_skew,
        };
        match self {
            Event::Sale(s) => s.check(now, &mut v),
            Event::Session(s) => s.check(now, &mut v),
        }
        v.found
    }
}

struct Checks {
    found: Vec<Violation>,
    max_skew: Duration,
}

impl Checks {
    fn fail(&mut self, field: &'static str, reason: impl Into<String>) {
        self.found.push(Violation {
            field,
            reason: reason.into(),
        });
    }

    fn id(&mut self, field: &'static str, value: &str) {
        self.text(field, value, MAX_ID_LEN);
    }

    /// Non-blank, at most `max` bytes, and no control characters: PostgreSQL
    /// text cannot hold NUL, and the others forge log lines and CSV rows.
    fn text(&mut self, field: &'static str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.fail(field, "is empty");
        } else if value.len() > max {
            self.fail(
                field,
                format!("is {} bytes long, at most {max} allowed", value.len()),
            );
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            self.fail(
                field,
                format!("contains a control character (U+{:04X})", u32::from(c)),
            );
        }
    }

    fn time(&mut self, field: &'static str, t: DateTime<Utc>, now: DateTime<Utc>) {
        let latest = now
            .checked_add_signed(self.max_skew)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if t > latest {
            self.fail(
                field,
                format!(
                    "{t} is more than {} s in the future (clock skew allowance)",
                    self.max_skew.num_seconds()
                ),
            );
        }
        if t < earliest_plausible() {
            self.fail(field, format!("{t} is before 2000-01-01"));
        }
    }

    /// A finite, non-negative amount of at most `max` that also fits a line
    /// amount column once rounded to cents.
    fn money(&mut self, field: &'static str, value: f64, max: f64) -> bool {
        if !value.is_finite() {
            self.fail(field, "is not a finite number");
            false
        } else if value < 0.0 {
            self.fail(field, format!("is negative ({value})"));
            false
        } else if value > max {
            self.fail(field, format!("{value} exceeds {max}"));
            false
        } else if !fits_line(value) {
            self.fail(
                field,
                format!("{value} exceeds the largest line amount {}", line_max()),
            );
            false
        } else {
            true
        }
    }

    fn region(&mut self, region: &str, country: &str) {
        self.text("region", region, MAX_ID_LEN);
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            self.fail(
                "country",
                format!("{country:?} is not an ISO 3166-1 alpha-2 code"),
            );
        }
    }

    fn channel(&mut self, channel: &Channel) {
        if let Channel::Unknown(c) = channel {
            self.fail(
                "channel",
                format!("unknown channel {c:?} (web, mobile, store)"),
            );
        }
    }
}

/// Whether `amount` (finite, non-negative) rounds to at most [`MAX_LINE_CENTS`].
fn fits_line(amount: f64) -> bool {
    (amount * 100.0).round() <= MAX_LINE_CENTS as f64
}

fn line_max() -> String {
    format!("{}.{:02}", MAX_LINE_CENTS / 100, MAX_LINE_CENTS % 100)
}

fn earliest_plausible() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl SaleEvent {
    fn check(&self, now: DateTime<Utc>, v: &mut Checks) {
        if self.transaction_id.is_nil() {
            v.fail("transaction_id", "is the nil UUID");
        }
        v.time("occurred_at", self.occurred_at, now);
        v.id("customer_id", &self.customer_id);
        v.id("session_id", &self.session_id);
        v.id("product_id", &self.product_id);
        v.text("product_name", &self.product_name, MAX_TEXT_LEN);
        v.text("category", &self.category, MAX_ID_LEN);
        let qty_ok = if self.quantity <= 0 {
            v.fail(
                "quantity",
                format!("must be positive, got {}", self.quantity),
            );
            false
        } else if self.quantity > MAX_QUANTITY {
            v.fail(
                "quantity",
                format!("{} exceeds {MAX_QUANTITY}", self.quantity),
            );
            false
        } else {
            true
        };
        let price_ok = v.money("unit_price", self.unit_price, MAX_UNIT_PRICE);
        let discount_ok = v.money("discount", self.discount, f64::MAX);
        let total_ok = v.money("total_amount", self.total_amount, f64::MAX);
        if qty_ok && price_ok && discount_ok {
            let gross = f64::from(self.quantity) * self.unit_price;
            if !fits_line(gross) {
                v.fail(
                    "quantity",
                    format!(
                        "quantity × unit_price = {gross:.2} exceeds the largest line amount {}",
                        line_max()
                    ),
                );
            } else if self.discount > gross + 0.005 {
                v.fail(
                    "discount",
                    format!(
                        "{:.2} exceeds the line's gross amount {gross:.2}",
                        self.discount
                    ),
                );
            } else if total_ok {
                let expected = gross - self.discount;
                if (self.total_amount - expected).abs() > 0.01 + 1e-9 {
                    v.fail(
                        "total_amount",
                        format!(
                            "{:.2} != quantity × unit_price − discount = {expected:.2}",
                            self.total_amount
                        ),
                    );
                }
            }
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            v.fail(
                "currency",
                format!("{:?} is not an ISO 4217 code", self.currency),
            );
        }
        v.text("payment_method", &self.payment_method, 32);
        if let Status::Unknown(s) = &self.status {
            v.fail(
                "status",
                format!("unknown status {s:?} (completed, pending, failed, refunded)"),
            );
        }
        v.region(&self.region, &self.country);
        v.channel(&self.channel);
    }
}

impl SessionEvent {
    fn check(&self, now: DateTime<Utc>, v: &mut Checks) {
        v.id("session_id", &self.session_id);
        v.id("customer_id", &self.customer_id);
        v.time("started_at", self.started_at, now);
        v.time("ended_at", self.ended_at, now);
        if self.ended_at < self.started_at {
            v.fail("ended_at", "is before started_at");
        }
        if !(0..=10_000).contains(&self.page_views) {
            v.fail(
                "page_views",
                format!("{} is outside 0..=10000", self.page_views),
            );
        }
        if !(0..=1_000).contains(&self.orders) {
            v.fail("orders", format!("{} is outside 0..=1000", self.orders));
        }
        v.region(&self.region, &self.country);
        v.channel(&self.channel);
    }
}

/// Converts a decimal amount to whole cents, rounding half away from zero.
pub(crate) fn to_cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale() -> SaleEvent {
        SaleEvent {
            transaction_id: Uuid::from_u128(1),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap(),
            customer_id: "c-1".into(),
            session_id: "s-1".into(),
            product_id: "p-1".into(),
            product_name: "Mug".into(),
            category: "Home".into(),
            quantity: 3,
            unit_price: 9.99,
            discount: 1.0,
            total_amount: 28.97,
            currency: "EUR".into(),
            payment_method: "credit_card".into(),
            status: Status::Completed,
            region: "Europe".into(),
            country: "DE".into(),
            channel: Channel::Web,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap()
    }

    #[test]
    fn valid_sale_round_trips() {
        let e = Event::Sale(sale());
        let bytes = e.to_json();
        assert_eq!(Event::decode(&bytes, now()), Ok(e));
    }

    #[test]
    fn every_violation_is_reported() {
        let mut s = sale();
        s.transaction_id = Uuid::nil();
        s.customer_id = String::new();
        s.quantity = 0;
        s.total_amount = -5.0;
        s.status = Status::parse("lost");
        s.channel = Channel::parse("fax");
        s.currency = "euro".into();
        s.product_name = "x".repeat(MAX_TEXT_LEN + 1);
        s.occurred_at = now() + Duration::minutes(6);
        let fields: Vec<_> = Event::Sale(s)
            .validate(now())
            .into_iter()
            .map(|v| v.field)
            .collect();
        for f in [
            "transaction_id",
            "customer_id",
            "quantity",
            "total_amount",
            "status",
            "channel",
            "currency",
            "product_name",
            "occurred_at",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn inconsistent_total_is_caught_within_a_cent() {
        let mut s = sale();
        s.total_amount = 28.98; // off by one cent: tolerated
        assert!(Event::Sale(s.clone()).validate(now()).is_empty());
        s.total_amount = 29.00; // off by three cents
        let v = Event::Sale(s).validate(now());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "total_amount");
    }

    #[test]
    fn undecodable_inputs_never_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"{\"type\":\"sale\"}",
            b"{\"type\":\"refund\"}",
            b"{\"type\":\"sale\",\"quantity\":\"three\"}",
            &[0xff, 0xfe, 0x00],
        ] {
            assert!(matches!(
                Event::decode(bad, now()),
                Err(Rejection::Undecodable(_))
            ));
        }
    }

    #[test]
    fn non_finite_amounts_are_invalid_not_panics() {
        let mut s = sale();
        s.unit_price = f64::NAN;
        s.discount = f64::INFINITY;
        let v = Event::Sale(s).validate(now());
        assert!(v.iter().any(|v| v.field == "unit_price"));
        assert!(v.iter().any(|v| v.field == "discount"));
    }

    #[test]
    fn nul_and_control_characters_are_invalid_in_every_text_field() {
        for field in [
            "category",
            "product_name",
            "payment_method",
            "region",
            "customer_id",
        ] {
            let mut s = sale();
            let evil = "Books\u{0}Evil".to_owned();
            match field {
                "category" => s.category = evil,
                "product_name" => s.product_name = evil,
                "payment_method" => s.payment_method = evil,
                "region" => s.region = evil,
                _ => s.customer_id = evil,
            }
            let v = Event::Sale(s).validate(now());
            assert!(
                v.iter()
                    .any(|v| v.field == field && v.reason.contains("U+0000")),
                "{field}: {v:?}"
            );
        }
        let mut s = sale();
        s.product_name = "line\nforged".into();
        assert_eq!(Event::Sale(s).validate(now()).len(), 1);
    }

    #[test]
    fn amounts_must_fit_a_line_column() {
        // The record that overflowed numeric(12,2): 10000 × 1,000,000.
        let mut s = sale();
        s.quantity = 10_000;
        s.unit_price = 1_000_000.0;
        s.discount = 0.0;
        s.total_amount = 1e10;
        let v = Event::Sale(s).validate(now());
        assert!(v.iter().any(|v| v.field == "total_amount"), "{v:?}");
        assert!(v.iter().any(|v| v.field == "quantity"), "{v:?}");
        // The largest line that fits is accepted.
        let mut s = sale();
        s.quantity = 10_000;
        s.unit_price = 999_999.99;
        s.discount = 0.0;
        s.total_amount = 9_999_999_900.0;
        assert_eq!(Event::Sale(s).validate(now()), vec![]);
        // A discount too large for the column, even if the gross is smaller.
        let mut s = sale();
        s.discount = 1e11;
        assert!(Event::Sale(s)
            .validate(now())
            .iter()
            .any(|v| v.field == "discount" && v.reason.contains("largest line amount")));
    }

    #[test]
    fn future_skew_is_minutes_and_configurable() {
        let mut s = sale();
        s.occurred_at = now() + Duration::minutes(4);
        assert_eq!(Event::Sale(s.clone()).validate(now()), vec![]);
        s.occurred_at = now() + Duration::hours(23);
        let v = Event::Sale(s.clone()).validate(now());
        assert_eq!(v.len(), 1);
        assert!(v[0].reason.contains("300 s in the future"), "{v:?}");
        assert_eq!(
            Event::Sale(s).validate_with(now(), Duration::days(1)),
            vec![]
        );
    }

    #[test]
    fn session_checks() {
        let s = SessionEvent {
            session_id: "s".into(),
            customer_id: "c".into(),
            started_at: now(),
            ended_at: now() - Duration::minutes(1),
            region: "Europe".into(),
            country: "de".into(),
            channel: Channel::Mobile,
            page_views: -1,
            orders: 0,
        };
        let fields: Vec<_> = Event::Session(s)
            .validate(now())
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["ended_at", "page_views", "country"]);
    }
}

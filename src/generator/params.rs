//! Every behaviour parameter of the generator, in one serde struct.
//!
//! This is the single place a behaviour script fills: the Rust engine in
//! [`super::Generator`] reads nothing else. [`GeneratorParams::validate`]
//! rejects parameter sets the engine cannot sample from, with a clear message.

use serde::{Deserialize, Serialize};

use crate::event::{Channel, Status};

/// A simulated shop: its population, catalogue, geography, traffic and order
/// behaviour. What a shop script gives; unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorParams {
    /// Seed of the shop itself: its catalogue and its existing customers
    /// (see [`LifecycleSpec::history_days`]). Kept apart from the behaviour
    /// seed so that runs with different seeds see the same shop, and the
    /// same existing customers come back.
    pub population_seed: u64,
    /// ISO 4217 code all prices are quoted in.
    pub currency: String,
    /// How customers arrive, come back and leave.
    #[serde(default)]
    pub lifecycle: LifecycleSpec,
    /// Pareto shape of a customer's basket multiplier (big spenders buy more units).
    pub spend_pareto_shape: f64,
    /// Product catalogue by category.
    pub categories: Vec<CategorySpec>,
    /// Zipf exponent of product popularity within a category.
    pub popularity_zipf_exponent: f64,
    /// Regions, their countries and their payment-method mix.
    pub regions: Vec<RegionSpec>,
    /// Customer segments (none = everyone average).
    #[serde(default)]
    pub segments: Vec<SegmentSpec>,
    /// Channel mix and per-channel conversion (probability a session orders).
    pub channels: Vec<ChannelSpec>,
    /// Relative traffic by hour of day (UTC), 24 values.
    pub hour_weights: Vec<f64>,
    /// Relative traffic by weekday, Monday first, 7 values.
    pub weekday_weights: Vec<f64>,
    /// How strongly busy hours also convert better: conversion is scaled by
    /// `1 + seasonal_conversion_lift × (hour weight − 1)`.
    pub seasonal_conversion_lift: f64,
    /// Order status mix.
    pub status_mix: Vec<StatusShare>,
    /// Mean page views of a session (geometric).
    pub mean_page_views: f64,
    /// Probability that a converting session places one more order (repeats).
    pub extra_order_probability: f64,
    /// Mean units per order line for an average customer.
    pub mean_quantity: f64,
    /// Probability an order line carries a discount.
    pub discount_probability: f64,
    /// Largest discount, as a fraction of the line's gross amount.
    pub max_discount_fraction: f64,
    /// Mean session length in seconds (exponential).
    pub mean_session_seconds: f64,
    /// Sessions per hour at an average hour: the pace of the simulated
    /// clock; on the wall clock, the pace of the customers' clock (who
    /// comes back when: events carry the wall time, but a seeded stream is
    /// the same whatever pace it is read at); and the traffic of the shop's
    /// history.
    pub sessions_per_hour: f64,
}

/// How customers arrive, come back and leave: a modified BG/NBD process
/// tied to traffic (see [`crate::generator::lifecycle`]). Fields left out
/// keep these defaults, calibrated in `scripts/generator/default.rhai`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleSpec {
    /// Purchases per year of an active average customer: the mean of the
    /// customers' purchase rates (a segment's `activity` multiplies it).
    pub purchases_per_year: f64,
    /// Gamma shape of purchase rates across customers: below 1, most
    /// customers buy rarely and a few often.
    pub rate_shape: f64,
    /// Mean probability that a customer leaves for good after a purchase,
    /// the first included (a segment's `dropout` overrides it).
    pub dropout: f64,
    /// How alike customers' dropout probabilities are (the Beta
    /// distribution's `a + b`): higher, more alike.
    pub dropout_concentration: f64,
    /// A customer who has not bought for this many days has left.
    pub max_gap_days: f64,
    /// How long the shop has been open when a run starts: the customers of
    /// that history still active then come back during the run. 0: the shop
    /// opens with the run.
    pub history_days: f64,
    /// Most returning customers kept in memory (24 bytes each); past it the
    /// ones whose next visit is farthest away are let go first.
    pub max_customers: u32,
}

impl Default for LifecycleSpec {
    fn default() -> Self {
        Self {
            purchases_per_year: 3.5,
            rate_shape: 0.8,
            dropout: 0.6,
            dropout_concentration: 4.0,
            max_gap_days: 365.0,
            history_days: 730.0,
            max_customers: 4_000_000,
        }
    }
}

/// One product category of the catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategorySpec {
    /// Category name, as events carry it in `category`.
    pub name: String,
    /// Share of demand.
    pub weight: f64,
    /// Number of products in the catalogue.
    pub products: u32,
    /// Median price (log-normal prices).
    pub median_price: f64,
    /// Log-normal sigma of prices.
    pub price_sigma: f64,
    /// Nouns product names are made from.
    pub items: Vec<String>,
}

/// A kind of customer: a share of the population, and how it differs from
/// an average customer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    /// The segment's name, for people (events do not carry it).
    pub name: String,
    /// Share of the population.
    pub share: f64,
    /// Purchase frequency multiplier (of the lifecycle's `purchases_per_year`).
    #[serde(default = "one")]
    pub activity: f64,
    /// Mean probability of leaving after a purchase (loyalty is its
    /// complement); `None`: the lifecycle's `dropout`.
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Units-per-order multiplier.
    #[serde(default = "one")]
    pub spend: f64,
    /// Conversion multiplier.
    #[serde(default = "one")]
    pub conversion: f64,
}

fn one() -> f64 {
    1.0
}

/// A region: its share of the customers, its countries and how people there pay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Region name, as events carry it in `region`.
    pub name: String,
    /// Relative share of the customers who live in the region.
    pub weight: f64,
    /// Its countries (ISO 3166-1 alpha-2 codes), weighted by share of its customers.
    pub countries: Vec<Share>,
    /// Payment methods used in the region, weighted by how often they are used.
    pub payment_mix: Vec<Share>,
}

/// A name with a relative weight; weights need not sum to 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// What is picked (a country code, a payment method).
    pub name: String,
    /// Relative weight: finite and non-negative.
    pub weight: f64,
}

/// A sales channel: its share of sessions and how often they order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Which channel (`web`, `mobile` or `store`).
    pub channel: Channel,
    /// Relative share of sessions.
    pub weight: f64,
    /// Probability that a session on this channel orders, within 0..=1.
    pub conversion: f64,
}

/// How often orders end in one status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusShare {
    /// The status.
    pub status: Status,
    /// Relative frequency.
    pub weight: f64,
}

/// A parameter set the generator cannot run; the message names the parameter.
#[derive(Debug, thiserror::Error)]
#[error("invalid generator parameters: {0}")]
pub struct ParamsError(pub String);

impl GeneratorParams {
    /// The built-in shop, `scripts/generator/default.rhai` (embedded): the
    /// script runs once per process, on first use; later calls clone the
    /// result. (Not `Default`: building it runs the script engine.)
    pub fn builtin() -> Self {
        super::behaviour::builtin().clone()
    }

    /// A bare but valid shop: one of everything. Only used should the
    /// embedded default script ever fail (a test makes sure it does not).
    pub(crate) fn fallback() -> Self {
        let one = |name: &str| Share {
            name: name.to_owned(),
            weight: 1.0,
        };
        Self {
            population_seed: 0x5a1e_5e5e,
            currency: "USD".into(),
            lifecycle: LifecycleSpec::default(),
            spend_pareto_shape: 2.5,
            categories: vec![CategorySpec {
                name: "General".into(),
                weight: 1.0,
                products: 100,
                median_price: 30.0,
                price_sigma: 0.7,
                items: vec!["Item".into()],
            }],
            popularity_zipf_exponent: 1.07,
            regions: vec![RegionSpec {
                name: "World".into(),
                weight: 1.0,
                countries: vec![one("US")],
                payment_mix: vec![one("credit_card")],
            }],
            segments: Vec::new(),
            channels: vec![ChannelSpec {
                channel: Channel::Web,
                weight: 1.0,
                conversion: 0.2,
            }],
            hour_weights: vec![1.0; 24],
            weekday_weights: vec![1.0; 7],
            seasonal_conversion_lift: 0.0,
            status_mix: vec![StatusShare {
                status: Status::Completed,
                weight: 1.0,
            }],
            mean_page_views: 7.0,
            extra_order_probability: 0.1,
            mean_quantity: 1.5,
            discount_probability: 0.1,
            max_discount_fraction: 0.3,
            mean_session_seconds: 420.0,
            sessions_per_hour: 3_600.0,
        }
    }
}

/// Most returning customers a generator may keep in memory (24 bytes each).
pub(crate) const MAX_CUSTOMERS: u64 = 20_000_000;
/// Most products over all categories.
pub(crate) const MAX_PRODUCTS: u64 = 1_000_000;
/// Most entries of any list (categories, items, regions, countries …).
pub(crate) const MAX_LIST: usize = 10_000;

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), ParamsError> {
    if ok {
        Ok(())
    } else {
        Err(ParamsError(msg()))
    }
}

fn positive_weights<'a>(
    what: &str,
    weights: impl Iterator<Item = f64> + 'a,
) -> Result<(), ParamsError> {
    let w: Vec<f64> = weights.collect();
    check(!w.is_empty(), || format!("{what}: empty"))?;
    check(w.iter().all(|x| x.is_finite() && *x >= 0.0), || {
        format!("{what}: weights must be finite and non-negative")
    })?;
    check(w.iter().sum::<f64>() > 0.0, || {
        format!("{what}: weights sum to zero")
    })
}

fn probability(what: &str, p: f64) -> Result<(), ParamsError> {
    check((0.0..=1.0).contains(&p), || {
        format!("{what} must be within 0..=1, got {p}")
    })
}

impl GeneratorParams {
    /// Rejects parameters the engine cannot sample from.
    pub fn validate(&self) -> Result<(), ParamsError> {
        check(
            self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase()),
            || format!("currency {:?} is not an ISO 4217 code", self.currency),
        )?;
        // Upper bounds too: a shop script comes from anyone, and each
        // number sizes memory (customers and products are tables).
        self.lifecycle.validate()?;
        check(self.categories.len() <= MAX_LIST, || {
            format!(
                "at most {MAX_LIST} categories, got {}",
                self.categories.len()
            )
        })?;
        check(self.regions.len() <= MAX_LIST, || {
            format!("at most {MAX_LIST} regions, got {}", self.regions.len())
        })?;
        check(self.segments.len() <= MAX_LIST, || {
            format!("at most {MAX_LIST} segments, got {}", self.segments.len())
        })?;
        let products: u64 = self.categories.iter().map(|c| u64::from(c.products)).sum();
        check(products <= MAX_PRODUCTS, || {
            format!("at most {MAX_PRODUCTS} products in all, got {products}")
        })?;
        for c in &self.categories {
            check(c.items.len() <= MAX_LIST, || {
                format!("category {:?}: at most {MAX_LIST} items", c.name)
            })?;
        }
        for r in &self.regions {
            check(
                r.countries.len() <= MAX_LIST && r.payment_mix.len() <= MAX_LIST,
                || {
                    format!(
                        "region {:?}: at most {MAX_LIST} countries and payment methods",
                        r.name
                    )
                },
            )?;
        }
        check(
            self.spend_pareto_shape.is_finite() && self.spend_pareto_shape > 0.0,
            || {
                format!(
                    "spend_pareto_shape must be > 0, got {}",
                    self.spend_pareto_shape
                )
            },
        )?;
        positive_weights("categories", self.categories.iter().map(|c| c.weight))?;
        for c in &self.categories {
            check(c.products > 0, || {
                format!("category {:?} has no products", c.name)
            })?;
            check(!c.items.is_empty(), || {
                format!("category {:?} has no items", c.name)
            })?;
            check(c.median_price.is_finite() && c.median_price > 0.0, || {
                format!("category {:?}: median_price must be > 0", c.name)
            })?;
            check(c.price_sigma.is_finite() && c.price_sigma >= 0.0, || {
                format!("category {:?}: price_sigma must be >= 0", c.name)
            })?;
        }
        check(
            self.popularity_zipf_exponent.is_finite() && self.popularity_zipf_exponent >= 0.0,
            || "popularity_zipf_exponent must be >= 0".into(),
        )?;
        positive_weights("regions", self.regions.iter().map(|r| r.weight))?;
        for r in &self.regions {
            positive_weights(
                &format!("region {:?} countries", r.name),
                r.countries.iter().map(|c| c.weight),
            )?;
            positive_weights(
                &format!("region {:?} payment_mix", r.name),
                r.payment_mix.iter().map(|c| c.weight),
            )?;
        }
        if !self.segments.is_empty() {
            positive_weights("segments", self.segments.iter().map(|s| s.share))?;
        }
        for s in &self.segments {
            for (what, v) in [
                ("activity", s.activity),
                ("spend", s.spend),
                ("conversion", s.conversion),
            ] {
                check(v.is_finite() && v > 0.0 && v <= 1_000.0, || {
                    format!(
                        "segment {:?}: {what} must be within (0, 1000], got {v}",
                        s.name
                    )
                })?;
            }
            if let Some(d) = s.dropout {
                probability(&format!("segment {:?}: dropout", s.name), d)?;
            }
        }
        positive_weights("channels", self.channels.iter().map(|c| c.weight))?;
        for c in &self.channels {
            check(c.channel.is_known(), || {
                format!("unknown channel {}", c.channel)
            })?;
            probability(&format!("channel {} conversion", c.channel), c.conversion)?;
        }
        check(self.hour_weights.len() == 24, || {
            format!(
                "hour_weights needs 24 values, got {}",
                self.hour_weights.len()
            )
        })?;
        positive_weights("hour_weights", self.hour_weights.iter().copied())?;
        check(self.weekday_weights.len() == 7, || {
            format!(
                "weekday_weights needs 7 values, got {}",
                self.weekday_weights.len()
            )
        })?;
        positive_weights("weekday_weights", self.weekday_weights.iter().copied())?;
        positive_weights("status_mix", self.status_mix.iter().map(|s| s.weight))?;
        for s in &self.status_mix {
            check(s.status.is_known(), || {
                format!("unknown status {}", s.status)
            })?;
        }
        probability("extra_order_probability", self.extra_order_probability)?;
        probability("discount_probability", self.discount_probability)?;
        probability("max_discount_fraction", self.max_discount_fraction)?;
        check(
            self.seasonal_conversion_lift.is_finite() && self.seasonal_conversion_lift >= 0.0,
            || "seasonal_conversion_lift must be >= 0".into(),
        )?;
        for (what, v, max) in [
            ("mean_page_views", self.mean_page_views, 1_000.0),
            ("mean_quantity", self.mean_quantity, 1_000.0),
            ("mean_session_seconds", self.mean_session_seconds, 86_400.0),
            ("sessions_per_hour", self.sessions_per_hour, 100_000_000.0),
        ] {
            check(v.is_finite() && (1.0..=max).contains(&v), || {
                format!("{what} must be within 1..={max}, got {v}")
            })?;
        }
        Ok(())
    }
}

impl LifecycleSpec {
    /// Rejects values the lifecycle cannot run with.
    fn validate(&self) -> Result<(), ParamsError> {
        for (what, v, lo, hi) in [
            (
                "purchases_per_year",
                self.purchases_per_year,
                1e-3,
                10_000.0,
            ),
            ("rate_shape", self.rate_shape, 0.01, 100.0),
            (
                "dropout_concentration",
                self.dropout_concentration,
                0.1,
                10_000.0,
            ),
            ("max_gap_days", self.max_gap_days, 1.0, 3_650.0),
            ("history_days", self.history_days, 0.0, 3_650.0),
        ] {
            check(v.is_finite() && (lo..=hi).contains(&v), || {
                format!("lifecycle.{what} must be within {lo}..={hi}, got {v}")
            })?;
        }
        probability("lifecycle.dropout", self.dropout)?;
        check(
            (1..=MAX_CUSTOMERS).contains(&u64::from(self.max_customers)),
            || {
                format!(
                    "lifecycle.max_customers must be within 1..={MAX_CUSTOMERS}, got {}",
                    self.max_customers
                )
            },
        )
    }
}

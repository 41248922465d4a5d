//! Scenarios: temporary changes to how the shop behaves (a flash sale, a
//! payment outage, a product launch), written as scripts and switched on and
//! off while the generator runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::GeneratorParams;

/// A scenario script's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name, as the app shows it.
    pub scenario: String,
    /// What it does, for people (empty if the script gives none).
    #[serde(default)]
    pub description: String,
    /// How long it lasts once on (`None`: until switched off). Generator
    /// time: simulated minutes on a simulated clock.
    #[serde(default)]
    pub duration_minutes: Option<f64>,
    /// What it changes while on.
    pub effects: Effects,
    /// The script it came from.
    #[serde(skip)]
    pub file: String,
}

/// What a scenario changes. Every field is optional; multipliers compose
/// when several scenarios are on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Effects {
    /// Sessions per unit of time, × this. Returning customers come when
    /// they come, so the extra sessions are new visitors: a campaign.
    pub traffic: f64,
    /// Probability that a session orders, × this.
    pub conversion: f64,
    /// Probability that a customer leaves after a purchase, × this (capped
    /// at 1): a bad experience.
    pub churn: f64,
    /// Demand for products of a category, × this (by category name).
    pub categories: BTreeMap<String, f64>,
    /// Extra discounts on order lines (`None`: the shop's own only).
    pub discount: Option<Discount>,
    /// A payment method failing (`None`: no outage).
    pub payment_outage: Option<PaymentOutage>,
    /// New products entering the catalogue (`None`: no launch).
    pub launch: Option<Launch>,
}

impl Default for Effects {
    fn default() -> Self {
        Self {
            traffic: 1.0,
            conversion: 1.0,
            churn: 1.0,
            categories: BTreeMap::new(),
            discount: None,
            payment_outage: None,
            launch: None,
        }
    }
}

/// Discounts on order lines (of some categories, or all).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discount {
    /// Empty: every category.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Probability an order line is discounted.
    pub probability: f64,
    /// Discount range as fractions of the line's gross amount.
    pub min_fraction: f64,
    /// Upper end of that range: at least `min_fraction`, at most 0.95.
    pub max_fraction: f64,
}

/// One payment method failing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentOutage {
    /// The failing method, as the shop's payment mixes name it (`paypal`).
    pub method: String,
    /// Share of its payments that fail.
    pub failure_rate: f64,
    /// Probability that a customer whose payment failed pays again at once
    /// with another method.
    #[serde(default = "half")]
    pub retry_probability: f64,
}

fn half() -> f64 {
    0.5
}

fn one_product() -> u32 {
    1
}

/// New products entering the catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// Category of the new products; must be one of the shop's.
    pub category: String,
    /// Product name, 1 to 200 bytes; numbered (`name 1`, `name 2`, …) when
    /// several products launch.
    pub name: String,
    /// Unit price of each new product, in the shop's currency.
    pub price: f64,
    /// Share of all demand the new products take while on.
    pub share: f64,
    /// How many products launch, 1 to 100 (1 by default).
    #[serde(default = "one_product")]
    pub products: u32,
}

fn in_range(what: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(format!("{what} must be between {lo} and {hi}, got {v}"))
    }
}

impl Scenario {
    /// Checks values that make no sense whatever the shop.
    pub fn check(&self) -> Result<(), String> {
        if self.scenario.trim().is_empty() {
            return Err("`scenario` (its name) is empty".into());
        }
        if let Some(d) = self.duration_minutes {
            in_range("duration_minutes", d, 0.1, 1e7)?;
        }
        let e = &self.effects;
        in_range("effects.traffic", e.traffic, 0.01, 100.0)?;
        in_range("effects.conversion", e.conversion, 0.0, 20.0)?;
        in_range("effects.churn", e.churn, 0.0, 100.0)?;
        for (c, m) in &e.categories {
            in_range(&format!("effects.categories.{c}"), *m, 0.0, 1000.0)?;
        }
        if let Some(d) = &e.discount {
            in_range("effects.discount.probability", d.probability, 0.0, 1.0)?;
            in_range("effects.discount.min_fraction", d.min_fraction, 0.0, 0.95)?;
            in_range(
                "effects.discount.max_fraction",
                d.max_fraction,
                d.min_fraction,
                0.95,
            )?;
        }
        if let Some(p) = &e.payment_outage {
            in_range(
                "effects.payment_outage.failure_rate",
                p.failure_rate,
                0.0,
                1.0,
            )?;
            in_range(
                "effects.payment_outage.retry_probability",
                p.retry_probability,
                0.0,
                1.0,
            )?;
        }
        if let Some(l) = &e.launch {
            if l.name.trim().is_empty() || l.name.len() > 200 {
                return Err("effects.launch.name: 1 to 200 characters".into());
            }
            in_range("effects.launch.price", l.price, 0.01, 1e7)?;
            in_range("effects.launch.share", l.share, 0.0, 0.95)?;
            if !(1..=100).contains(&l.products) {
                return Err(format!(
                    "effects.launch.products must be 1 to 100, got {}",
                    l.products
                ));
            }
        }
        Ok(())
    }

    /// How long it lasts once on (`None`: until switched off).
    pub(crate) fn duration(&self) -> Option<Duration> {
        self.duration_minutes
            .map(|m| Duration::from_secs_f64(m * 60.0))
    }
}

/// A scenario that is on.
#[derive(Clone, Debug)]
pub struct Active {
    /// The scenario.
    pub scenario: Arc<Scenario>,
    /// When it was switched on (wall clock; what the app shows).
    pub switched_on: Instant,
}

impl Active {
    /// Wall-clock time left (`None`: until switched off).
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.scenario
            .duration()
            .map(|d| d.saturating_sub(self.switched_on.elapsed()))
    }
}

/// What changes a running generator's behaviour from outside: the shop
/// (a new shop script) and the scenarios switched on. The generator reads
/// the version once per session and the rest only when it changed.
#[derive(Default)]
pub struct Switchboard {
    version: AtomicU64,
    state: Mutex<Board>,
}

#[derive(Default)]
struct Board {
    shop: Option<(u64, Arc<GeneratorParams>)>,
    active: Vec<Active>,
}

impl Switchboard {
    /// An empty switchboard, shared: no new shop, no scenario on.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Board) -> T) -> T {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut b)
    }

    fn bump(&self) -> u64 {
        self.version.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Replaces the shop from the next session on (customers and catalogue
    /// are rebuilt; the behaviour stream goes on).
    pub(crate) fn set_shop(&self, params: GeneratorParams) {
        let v = self.bump();
        self.with(|b| b.shop = Some((v, Arc::new(params))));
    }

    /// The shop set last, with the version that set it.
    pub fn shop(&self) -> Option<(u64, Arc<GeneratorParams>)> {
        self.with(|b| b.shop.clone())
    }

    /// Switches `s` on (again, from now, if it was on).
    pub fn switch_on(&self, s: Scenario) {
        self.with(|b| {
            b.active.retain(|x| x.scenario.scenario != s.scenario);
            b.active.push(Active {
                scenario: Arc::new(s),
                switched_on: Instant::now(),
            });
        });
        self.bump();
    }

    /// Switches the scenario named `name` off; false if it was not on.
    pub(crate) fn switch_off(&self, name: &str) -> bool {
        let changed = self.with(|b| {
            let before = b.active.len();
            b.active.retain(|x| x.scenario.scenario != name);
            b.active.len() != before
        });
        if changed {
            self.bump();
        }
        changed
    }

    /// What is on, in the order switched on.
    pub(crate) fn active(&self) -> Vec<Active> {
        self.with(|b| b.active.clone())
    }

    /// Bumped by every change (a shop set, a scenario switched on or off).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

//! Every behaviour parameter of the generator, in one serde struct.
//!
//! This is the single place a behaviour script fills: the Rust engine in
//! [`super::Generator`] reads nothing else. [`GeneratorParams::validate`]
//! rejects parameter sets the engine cannot sample from, with a clear message.

use serde::{Deserialize, Serialize};

use crate::event::{Channel, Status};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GeneratorParams {
    /// Seed of the shop itself: its customers and catalogue. Kept apart from
    /// the behaviour seed so that runs with different seeds see the same shop
    /// (and the same customers come back as repeat buyers).
    pub population_seed: u64,
    /// ISO 4217 code all prices are quoted in.
    pub currency: String,
    /// Size of the customer population.
    pub customers: u32,
    /// Pareto shape of customer activity (how often a customer visits).
    /// 1.16 gives the classic 80/20 split: a fifth of the customers make
    /// most of the visits, hence most repeat purchases.
    pub activity_pareto_shape: f64,
    /// Pareto shape of a customer's basket multiplier (big spenders buy more units).
    pub spend_pareto_shape: f64,
    /// Product catalogue by category.
    pub categories: Vec<CategorySpec>,
    /// Zipf exponent of product popularity within a category.
    pub popularity_zipf_exponent: f64,
    /// Regions, their countries and their payment-method mix.
    pub regions: Vec<RegionSpec>,
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
    /// Simulated clock only: sessions per hour at an average hour.
    pub sessions_per_hour: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategorySpec {
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub name: String,
    pub weight: f64,
    pub countries: Vec<Share>,
    pub payment_mix: Vec<Share>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub name: String,
    pub weight: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelSpec {
    pub channel: Channel,
    pub weight: f64,
    pub conversion: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusShare {
    pub status: Status,
    pub weight: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid generator parameters: {0}")]
pub struct ParamsError(pub String);

fn shares(pairs: &[(&str, f64)]) -> Vec<Share> {
    pairs
        .iter()
        .map(|(n, w)| Share {
            name: (*n).to_owned(),
            weight: *w,
        })
        .collect()
}

fn category(name: &str, weight: f64, median: f64, sigma: f64, items: &[&str]) -> CategorySpec {
    CategorySpec {
        name: name.to_owned(),
        weight,
        products: 60,
        median_price: median,
        price_sigma: sigma,
        items: items.iter().map(|s| (*s).to_owned()).collect(),
    }
}

impl Default for GeneratorParams {
    fn default() -> Self {
        Self {
            population_seed: 0x5a1e_5e5e,
            currency: "USD".into(),
            customers: 50_000,
            activity_pareto_shape: 1.16,
            spend_pareto_shape: 2.5,
            categories: vec![
                category(
                    "Electronics",
                    0.16,
                    120.0,
                    0.8,
                    &[
                        "Headphones",
                        "Speaker",
                        "Charger",
                        "Monitor",
                        "Keyboard",
                        "Webcam",
                        "Tablet",
                        "Smartwatch",
                    ],
                ),
                category(
                    "Fashion",
                    0.18,
                    45.0,
                    0.6,
                    &[
                        "Jacket",
                        "Sneakers",
                        "Dress",
                        "Jeans",
                        "T-Shirt",
                        "Scarf",
                        "Backpack",
                        "Sunglasses",
                    ],
                ),
                category(
                    "Home & Kitchen",
                    0.14,
                    35.0,
                    0.7,
                    &[
                        "Mug",
                        "Pan",
                        "Blender",
                        "Lamp",
                        "Towel Set",
                        "Knife",
                        "Kettle",
                        "Cushion",
                    ],
                ),
                category(
                    "Beauty",
                    0.10,
                    22.0,
                    0.5,
                    &[
                        "Serum",
                        "Lipstick",
                        "Shampoo",
                        "Moisturizer",
                        "Perfume",
                        "Mascara",
                        "Sunscreen",
                        "Face Mask",
                    ],
                ),
                category(
                    "Sports & Outdoors",
                    0.09,
                    55.0,
                    0.7,
                    &[
                        "Yoga Mat",
                        "Tent",
                        "Water Bottle",
                        "Dumbbells",
                        "Bike Light",
                        "Running Shorts",
                        "Helmet",
                        "Hiking Poles",
                    ],
                ),
                category(
                    "Books",
                    0.08,
                    16.0,
                    0.4,
                    &[
                        "Novel",
                        "Cookbook",
                        "Biography",
                        "Comic",
                        "Travel Guide",
                        "Textbook",
                        "Poetry",
                        "Atlas",
                    ],
                ),
                category(
                    "Toys & Games",
                    0.07,
                    28.0,
                    0.6,
                    &[
                        "Puzzle",
                        "Board Game",
                        "Action Figure",
                        "Building Set",
                        "Plush",
                        "Card Game",
                        "RC Car",
                        "Doll",
                    ],
                ),
                category(
                    "Grocery",
                    0.08,
                    9.0,
                    0.5,
                    &[
                        "Coffee",
                        "Tea",
                        "Olive Oil",
                        "Chocolate",
                        "Pasta",
                        "Granola",
                        "Honey",
                        "Spices",
                    ],
                ),
                category(
                    "Health",
                    0.06,
                    18.0,
                    0.5,
                    &[
                        "Vitamins",
                        "Protein",
                        "Thermometer",
                        "First Aid Kit",
                        "Massager",
                        "Toothbrush",
                        "Scale",
                        "Bandages",
                    ],
                ),
                category(
                    "Automotive",
                    0.04,
                    40.0,
                    0.8,
                    &[
                        "Dash Cam",
                        "Floor Mats",
                        "Wiper Blades",
                        "Car Charger",
                        "Jump Starter",
                        "Seat Cover",
                        "Tire Gauge",
                        "Polish",
                    ],
                ),
            ],
            popularity_zipf_exponent: 1.07,
            regions: vec![
                RegionSpec {
                    name: "North America".into(),
                    weight: 0.38,
                    countries: shares(&[("US", 0.86), ("CA", 0.14)]),
                    payment_mix: shares(&[
                        ("credit_card", 0.45),
                        ("debit_card", 0.20),
                        ("paypal", 0.15),
                        ("apple_pay", 0.12),
                        ("google_pay", 0.05),
                        ("bank_transfer", 0.03),
                    ]),
                },
                RegionSpec {
                    name: "Europe".into(),
                    weight: 0.30,
                    countries: shares(&[
                        ("DE", 0.25),
                        ("GB", 0.22),
                        ("FR", 0.18),
                        ("ES", 0.11),
                        ("IT", 0.10),
                        ("NL", 0.08),
                        ("PL", 0.06),
                    ]),
                    payment_mix: shares(&[
                        ("credit_card", 0.25),
                        ("debit_card", 0.20),
                        ("paypal", 0.20),
                        ("bank_transfer", 0.12),
                        ("klarna", 0.10),
                        ("apple_pay", 0.08),
                        ("google_pay", 0.05),
                    ]),
                },
                RegionSpec {
                    name: "Asia Pacific".into(),
                    weight: 0.20,
                    countries: shares(&[
                        ("JP", 0.30),
                        ("AU", 0.22),
                        ("KR", 0.18),
                        ("SG", 0.12),
                        ("IN", 0.18),
                    ]),
                    payment_mix: shares(&[
                        ("credit_card", 0.35),
                        ("debit_card", 0.10),
                        ("paypal", 0.10),
                        ("apple_pay", 0.15),
                        ("google_pay", 0.15),
                        ("bank_transfer", 0.10),
                        ("cash_on_delivery", 0.05),
                    ]),
                },
                RegionSpec {
                    name: "Latin America".into(),
                    weight: 0.08,
                    countries: shares(&[("BR", 0.50), ("MX", 0.35), ("AR", 0.15)]),
                    payment_mix: shares(&[
                        ("credit_card", 0.40),
                        ("debit_card", 0.15),
                        ("paypal", 0.10),
                        ("bank_transfer", 0.15),
                        ("cash_on_delivery", 0.20),
                    ]),
                },
                RegionSpec {
                    name: "Middle East & Africa".into(),
                    weight: 0.04,
                    countries: shares(&[("AE", 0.40), ("ZA", 0.35), ("EG", 0.25)]),
                    payment_mix: shares(&[
                        ("credit_card", 0.30),
                        ("debit_card", 0.15),
                        ("paypal", 0.10),
                        ("apple_pay", 0.05),
                        ("bank_transfer", 0.10),
                        ("cash_on_delivery", 0.30),
                    ]),
                },
            ],
            channels: vec![
                ChannelSpec {
                    channel: Channel::Web,
                    weight: 0.55,
                    conversion: 0.22,
                },
                ChannelSpec {
                    channel: Channel::Mobile,
                    weight: 0.35,
                    conversion: 0.16,
                },
                ChannelSpec {
                    channel: Channel::Store,
                    weight: 0.10,
                    conversion: 0.55,
                },
            ],
            hour_weights: vec![
                0.35, 0.25, 0.20, 0.18, 0.20, 0.30, 0.50, 0.75, 0.95, 1.05, 1.15, 1.25, 1.40, 1.35,
                1.20, 1.15, 1.20, 1.35, 1.55, 1.75, 1.85, 1.70, 1.25, 0.70,
            ],
            weekday_weights: vec![0.95, 0.92, 0.95, 1.00, 1.05, 1.10, 1.03],
            seasonal_conversion_lift: 0.25,
            status_mix: vec![
                StatusShare {
                    status: Status::Completed,
                    weight: 0.90,
                },
                StatusShare {
                    status: Status::Pending,
                    weight: 0.04,
                },
                StatusShare {
                    status: Status::Failed,
                    weight: 0.035,
                },
                StatusShare {
                    status: Status::Refunded,
                    weight: 0.025,
                },
            ],
            mean_page_views: 7.0,
            extra_order_probability: 0.12,
            mean_quantity: 1.6,
            discount_probability: 0.18,
            max_discount_fraction: 0.30,
            mean_session_seconds: 420.0,
            sessions_per_hour: 3_600.0,
        }
    }
}

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
        check(self.customers > 0, || "customers must be > 0".into())?;
        for (what, shape) in [
            ("activity_pareto_shape", self.activity_pareto_shape),
            ("spend_pareto_shape", self.spend_pareto_shape),
        ] {
            check(shape.is_finite() && shape > 0.0, || {
                format!("{what} must be > 0, got {shape}")
            })?;
        }
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
        for (what, v) in [
            ("mean_page_views", self.mean_page_views),
            ("mean_quantity", self.mean_quantity),
            ("mean_session_seconds", self.mean_session_seconds),
            ("sessions_per_hour", self.sessions_per_hour),
        ] {
            check(v.is_finite() && v >= 1.0, || {
                format!("{what} must be >= 1, got {v}")
            })?;
        }
        Ok(())
    }
}

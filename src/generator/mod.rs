//! The event generator: a seeded, deterministic simulation of a web shop.
//!
//! A fixed population (customers, catalogue) is built from
//! [`GeneratorParams::population_seed`]; behaviour (who visits when, what they
//! buy) comes from the run's seed. Each step simulates one shopping session and
//! emits its sale events followed by one session event.

mod params;

use std::collections::VecDeque;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Distribution, Exp, LogNormal, Pareto};
use uuid::Uuid;

pub use params::{
    CategorySpec, ChannelSpec, GeneratorParams, ParamsError, RegionSpec, Share, StatusShare,
};

use crate::event::{Channel, Event, SaleEvent, SessionEvent, Status};

/// Where event timestamps come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Clock {
    /// Timestamps are the wall-clock time of generation (live pipelines).
    Wall,
    /// A simulated clock starting at the given instant and advancing by
    /// seasonal session inter-arrival times (backfills, deterministic output).
    Simulated(DateTime<Utc>),
}

struct Customer {
    id: String,
    region: usize,
    country: usize,
    /// Basket multiplier (Pareto): big spenders buy more units.
    spend: f64,
}

struct Product {
    id: String,
    name: String,
    category: usize,
    price: f64,
}

struct Region {
    name: String,
    countries: Vec<String>,
    country_pick: WeightedAliasIndex<f64>,
    payment_methods: Vec<String>,
    payment_pick: WeightedAliasIndex<f64>,
}

/// The generator. Not `Sync`: give each producer its own (they are cheap to
/// clone from params) or guard one with a mutex.
pub struct Generator {
    params: GeneratorParams,
    rng: ChaCha8Rng,
    clock: Clock,
    sim_now: DateTime<Utc>,
    customers: Vec<Customer>,
    customer_pick: WeightedAliasIndex<f64>,
    products: Vec<Product>,
    product_pick: WeightedAliasIndex<f64>,
    categories: Vec<String>,
    regions: Vec<Region>,
    channel_pick: WeightedAliasIndex<f64>,
    status_pick: WeightedAliasIndex<f64>,
    hour_norm: [f64; 24],
    weekday_norm: [f64; 7],
    session_len: Exp<f64>,
    pending: VecDeque<Event>,
    sessions: u64,
}

fn alias(weights: impl IntoIterator<Item = f64>) -> Result<WeightedAliasIndex<f64>, ParamsError> {
    WeightedAliasIndex::new(weights.into_iter().collect())
        .map_err(|e| ParamsError(format!("weights: {e}")))
}

/// Weights scaled so that their mean is 1.
fn normalized<const N: usize>(w: &[f64]) -> [f64; N] {
    let mean = w.iter().sum::<f64>() / N as f64;
    let mut out = [1.0; N];
    for (o, x) in out.iter_mut().zip(w) {
        *o = if mean > 0.0 { x / mean } else { 1.0 };
    }
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn random_uuid(rng: &mut impl Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// Small-mean Poisson sample (Knuth), capped to keep baskets plausible.
fn poisson(rng: &mut impl Rng, lambda: f64, cap: u32) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    let l = (-lambda).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= l || k >= cap {
            return k;
        }
        k += 1;
    }
}

impl Generator {
    pub fn new(params: GeneratorParams, seed: u64, clock: Clock) -> Result<Self, ParamsError> {
        params.validate()?;
        let mut pop = ChaCha8Rng::seed_from_u64(params.population_seed);

        let regions = params
            .regions
            .iter()
            .map(|r| {
                Ok(Region {
                    name: r.name.clone(),
                    countries: r.countries.iter().map(|c| c.name.clone()).collect(),
                    country_pick: alias(r.countries.iter().map(|c| c.weight))?,
                    payment_methods: r.payment_mix.iter().map(|c| c.name.clone()).collect(),
                    payment_pick: alias(r.payment_mix.iter().map(|c| c.weight))?,
                })
            })
            .collect::<Result<Vec<_>, ParamsError>>()?;
        let region_pick = alias(params.regions.iter().map(|r| r.weight))?;

        let activity = Pareto::new(1.0, params.activity_pareto_shape)
            .map_err(|e| ParamsError(format!("activity_pareto_shape: {e}")))?;
        let spend = Pareto::new(1.0, params.spend_pareto_shape)
            .map_err(|e| ParamsError(format!("spend_pareto_shape: {e}")))?;
        let mut activity_weights = Vec::with_capacity(params.customers as usize);
        let customers = (0..params.customers)
            .map(|i| {
                let region = region_pick.sample(&mut pop);
                let country = regions[region].country_pick.sample(&mut pop);
                // Cap the tail so one customer cannot dominate a small population.
                activity_weights.push(activity.sample(&mut pop).min(1_000.0));
                Customer {
                    id: format!("C{i:07}"),
                    region,
                    country,
                    spend: spend.sample(&mut pop).min(8.0),
                }
            })
            .collect::<Vec<_>>();
        let customer_pick = alias(activity_weights)?;

        let mut products = Vec::new();
        let mut product_weights = Vec::new();
        const ADJECTIVES: [&str; 12] = [
            "Classic", "Pro", "Lite", "Ultra", "Eco", "Mini", "Max", "Smart", "Urban", "Premium",
            "Everyday", "Vintage",
        ];
        for (ci, c) in params.categories.iter().enumerate() {
            let prices = LogNormal::new(c.median_price.ln(), c.price_sigma)
                .map_err(|e| ParamsError(format!("category {:?} prices: {e}", c.name)))?;
            let zipf_total: f64 = (1..=c.products)
                .map(|k| 1.0 / f64::from(k).powf(params.popularity_zipf_exponent))
                .sum();
            for k in 1..=c.products {
                let raw: f64 = prices.sample(&mut pop);
                let price = if raw >= 5.0 {
                    raw.floor() + 0.99
                } else {
                    round2(raw.max(0.5))
                };
                let adjective = ADJECTIVES[pop.random_range(0..ADJECTIVES.len())];
                let item = &c.items[pop.random_range(0..c.items.len())];
                products.push(Product {
                    id: format!("P{ci:02}{k:04}"),
                    name: format!("{adjective} {item} {}", 100 + k),
                    category: ci,
                    price,
                });
                let zipf = 1.0 / f64::from(k).powf(params.popularity_zipf_exponent) / zipf_total;
                product_weights.push(c.weight * zipf);
            }
        }
        let product_pick = alias(product_weights)?;

        let sim_now = match clock {
            Clock::Simulated(t) => t,
            Clock::Wall => Utc::now(),
        };
        Ok(Self {
            categories: params.categories.iter().map(|c| c.name.clone()).collect(),
            channel_pick: alias(params.channels.iter().map(|c| c.weight))?,
            status_pick: alias(params.status_mix.iter().map(|s| s.weight))?,
            hour_norm: normalized::<24>(&params.hour_weights),
            weekday_norm: normalized::<7>(&params.weekday_weights),
            session_len: Exp::new(1.0 / params.mean_session_seconds)
                .map_err(|e| ParamsError(format!("mean_session_seconds: {e}")))?,
            rng: ChaCha8Rng::seed_from_u64(seed),
            clock,
            sim_now,
            customers,
            customer_pick,
            products,
            product_pick,
            regions,
            params,
            pending: VecDeque::new(),
            sessions: 0,
        })
    }

    pub fn params(&self) -> &GeneratorParams {
        &self.params
    }

    /// Sessions simulated so far.
    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// The next event. Never fails: parameters were validated up front.
    pub fn next_event(&mut self) -> Event {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return e;
            }
            self.simulate_session();
        }
    }

    fn seasonality(&self, t: DateTime<Utc>) -> (f64, f64) {
        let hour = self.hour_norm[t.hour() as usize];
        let day = self.weekday_norm[t.weekday().num_days_from_monday() as usize];
        (hour, day)
    }

    /// Advances the simulated clock by one seasonal inter-arrival time.
    fn next_session_start(&mut self) -> DateTime<Utc> {
        match self.clock {
            Clock::Wall => Utc::now(),
            Clock::Simulated(_) => {
                let (hour, day) = self.seasonality(self.sim_now);
                let rate_per_sec = self.params.sessions_per_hour / 3600.0 * hour * day;
                let u: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
                let gap = -u.ln() / rate_per_sec.max(1e-9);
                self.sim_now += Duration::microseconds((gap * 1e6) as i64);
                self.sim_now
            }
        }
    }

    fn simulate_session(&mut self) {
        self.sessions += 1;
        let start = self.next_session_start();
        let length = self.session_len.sample(&mut self.rng).max(10.0);
        let (start, end) = match self.clock {
            // Live: the session is ending now; nothing is stamped in the future.
            Clock::Wall => (start - Duration::milliseconds((length * 1e3) as i64), start),
            Clock::Simulated(_) => (start, start + Duration::milliseconds((length * 1e3) as i64)),
        };
        let ci = self.customer_pick.sample(&mut self.rng);
        let channel_i = self.channel_pick.sample(&mut self.rng);
        let channel = self.params.channels[channel_i].channel.clone();
        let (hour, _) = self.seasonality(start);
        let lift = 1.0 + self.params.seasonal_conversion_lift * (hour - 1.0);
        let p_convert = (self.params.channels[channel_i].conversion * lift).clamp(0.0, 1.0);
        let p_more = 1.0 - 1.0 / self.params.mean_page_views;
        let mut page_views = 1;
        while page_views < 500 && self.rng.random_bool(p_more) {
            page_views += 1;
        }
        let session_id = format!("S{:016x}", self.rng.random::<u64>());

        let mut orders = 0;
        if self.rng.random_bool(p_convert) {
            orders = 1;
            while orders < 5 && self.rng.random_bool(self.params.extra_order_probability) {
                orders += 1;
            }
        }
        for _ in 0..orders {
            let at = match self.clock {
                Clock::Wall => end,
                Clock::Simulated(_) => {
                    let f: f64 = self.rng.random_range(0.3..1.0);
                    start + Duration::milliseconds((length * f * 1e3) as i64)
                }
            };
            let sale = self.sale(ci, &session_id, channel.clone(), at);
            self.pending.push_back(Event::Sale(sale));
        }
        let c = &self.customers[ci];
        let region = &self.regions[c.region];
        self.pending.push_back(Event::Session(SessionEvent {
            session_id,
            customer_id: c.id.clone(),
            started_at: start,
            ended_at: end,
            region: region.name.clone(),
            country: region.countries[c.country].clone(),
            channel,
            page_views,
            orders,
        }));
    }

    fn sale(
        &mut self,
        ci: usize,
        session_id: &str,
        channel: Channel,
        at: DateTime<Utc>,
    ) -> SaleEvent {
        let rng = &mut self.rng;
        let c = &self.customers[ci];
        let region = &self.regions[c.region];
        let p = &self.products[self.product_pick.sample(rng)];
        let lambda = (self.params.mean_quantity - 1.0).max(0.0) * c.spend;
        let quantity = 1 + poisson(rng, lambda, 49) as i32;
        let gross = f64::from(quantity) * p.price;
        let discount = if rng.random_bool(self.params.discount_probability) {
            let max = self.params.max_discount_fraction.max(0.05);
            round2(gross * rng.random_range(0.05..=max))
        } else {
            0.0
        };
        let status: Status = self.params.status_mix[self.status_pick.sample(rng)]
            .status
            .clone();
        let payment = &region.payment_methods[region.payment_pick.sample(rng)];
        SaleEvent {
            transaction_id: random_uuid(rng),
            occurred_at: at,
            customer_id: c.id.clone(),
            session_id: session_id.to_owned(),
            product_id: p.id.clone(),
            product_name: p.name.clone(),
            category: self.categories[p.category].clone(),
            quantity,
            unit_price: p.price,
            discount,
            total_amount: round2(gross - discount),
            currency: self.params.currency.clone(),
            payment_method: payment.clone(),
            status,
            region: region.name.clone(),
            country: region.countries[c.country].clone(),
            channel,
        }
    }
}

/// Output format of [`write_events`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// One JSON event per line, as on the topic.
    Ndjson,
    /// One row per event, the union of both event types' columns.
    Csv,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ndjson" | "json" => Ok(Self::Ndjson),
            "csv" => Ok(Self::Csv),
            other => Err(format!("unknown format {other:?} (ndjson, csv)")),
        }
    }
}

const CSV_HEADER: [&str; 22] = [
    "type",
    "transaction_id",
    "occurred_at",
    "customer_id",
    "session_id",
    "product_id",
    "product_name",
    "category",
    "quantity",
    "unit_price",
    "discount",
    "total_amount",
    "currency",
    "payment_method",
    "status",
    "region",
    "country",
    "channel",
    "started_at",
    "ended_at",
    "page_views",
    "orders",
];

/// Writes `count` events to `out`.
pub fn write_events<W: std::io::Write>(
    g: &mut Generator,
    count: u64,
    format: OutputFormat,
    out: W,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    match format {
        OutputFormat::Ndjson => {
            for _ in 0..count {
                serde_json::to_writer(&mut out, &g.next_event())?;
                out.write_all(b"\n")?;
            }
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(CSV_HEADER)?;
            for _ in 0..count {
                let row: [String; 22] = match g.next_event() {
                    Event::Sale(s) => [
                        "sale".into(),
                        s.transaction_id.to_string(),
                        s.occurred_at.to_rfc3339(),
                        s.customer_id,
                        s.session_id,
                        s.product_id,
                        s.product_name,
                        s.category,
                        s.quantity.to_string(),
                        format!("{:.2}", s.unit_price),
                        format!("{:.2}", s.discount),
                        format!("{:.2}", s.total_amount),
                        s.currency,
                        s.payment_method,
                        s.status.to_string(),
                        s.region,
                        s.country,
                        s.channel.to_string(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ],
                    Event::Session(s) => [
                        "session".into(),
                        String::new(),
                        String::new(),
                        s.customer_id,
                        s.session_id,
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        s.region,
                        s.country,
                        s.channel.to_string(),
                        s.started_at.to_rfc3339(),
                        s.ended_at.to_rfc3339(),
                        s.page_views.to_string(),
                        s.orders.to_string(),
                    ],
                };
                w.write_record(&row)?;
            }
            w.flush()?;
        }
    }
    std::io::Write::flush(&mut out)
}

/// Default start of a simulated clock: midnight UTC seven days ago, so that a
/// backfill lands in the recent past.
pub fn default_simulated_start() -> DateTime<Utc> {
    let d = (Utc::now() - Duration::days(7)).date_naive();
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn sim(seed: u64) -> Generator {
        let start = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        Generator::new(GeneratorParams::default(), seed, Clock::Simulated(start)).unwrap()
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (mut a, mut b, mut c) = (sim(7), sim(7), sim(8));
        let ea: Vec<_> = (0..500).map(|_| a.next_event()).collect();
        let eb: Vec<_> = (0..500).map(|_| b.next_event()).collect();
        let ec: Vec<_> = (0..500).map(|_| c.next_event()).collect();
        assert_eq!(ea, eb);
        assert_ne!(ea, ec);
    }

    #[test]
    fn every_generated_event_is_valid() {
        let mut g = sim(1);
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        for _ in 0..20_000 {
            let e = g.next_event();
            assert_eq!(e.validate(now), vec![], "{e:?}");
        }
        let mut w = Generator::new(GeneratorParams::default(), 1, Clock::Wall).unwrap();
        for _ in 0..2_000 {
            let e = w.next_event();
            assert_eq!(e.validate(Utc::now()), vec![], "{e:?}");
        }
    }

    #[test]
    fn realistic_shape() {
        let mut g = sim(3);
        let mut sessions = 0u32;
        let mut orders = 0u32;
        let mut per_customer: HashMap<String, u32> = HashMap::new();
        let mut categories = HashSet::new();
        let mut statuses: HashMap<String, u32> = HashMap::new();
        let mut by_hour = [0u32; 24];
        for _ in 0..200_000 {
            match g.next_event() {
                Event::Sale(s) => {
                    orders += 1;
                    *per_customer.entry(s.customer_id).or_default() += 1;
                    categories.insert(s.category);
                    *statuses.entry(s.status.to_string()).or_default() += 1;
                }
                Event::Session(s) => {
                    sessions += 1;
                    by_hour[s.started_at.hour() as usize] += 1;
                }
            }
        }
        let conversion = f64::from(orders) / f64::from(sessions);
        assert!(
            (0.15..0.40).contains(&conversion),
            "conversion {conversion}"
        );
        assert!(categories.len() >= 8);
        let repeat =
            per_customer.values().filter(|&&n| n > 1).count() as f64 / per_customer.len() as f64;
        assert!(repeat > 0.2, "repeat buyers {repeat}");
        // Pareto: the top 20 % of buyers place well over 20 % of orders.
        let mut counts: Vec<u32> = per_customer.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top: u32 = counts[..counts.len() / 5].iter().sum();
        assert!(f64::from(top) / f64::from(orders) > 0.45);
        // Evening peak beats the small hours.
        assert!(by_hour[20] > 3 * by_hour[3], "{by_hour:?}");
        let completed = f64::from(statuses["completed"]) / f64::from(orders);
        assert!((0.85..0.95).contains(&completed), "completed {completed}");
        assert_eq!(statuses.len(), 4);
    }

    #[test]
    fn bad_params_are_rejected_with_a_message() {
        let mut p = GeneratorParams::default();
        p.hour_weights.pop();
        let err = Generator::new(p, 1, Clock::Wall).err().unwrap();
        assert!(err.to_string().contains("hour_weights"), "{err}");
        let mut p = GeneratorParams::default();
        p.channels[0].conversion = 1.5;
        assert!(Generator::new(p, 1, Clock::Wall).is_err());
    }
}

//! The event generator: a seeded, deterministic simulation of a web shop.
//!
//! The catalogue and the existing customers come from
//! [`GeneratorParams::population_seed`]; behaviour (who visits when, what they
//! buy, who comes back) from the run's seed and start. Each step simulates one
//! shopping session and emits its sale events followed by one session event.
//! Customers arrive with traffic, come back and leave as [`lifecycle`]
//! describes.
//!
//! ## Indexing
//! The simulation indexes its own tables (regions, countries, customers,
//! products, payment methods, status mix) with indices drawn from pickers
//! built over those same tables in [`Generator::new`], after
//! [`GeneratorParams::validate`] has refused every empty table. Those
//! functions allow `clippy::indexing_slicing` and say so; nothing indexes
//! with a value from outside.

pub mod behaviour;
pub mod lifecycle;
mod params;
pub mod scenario;
pub mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Distribution, Exp, LogNormal};
use uuid::Uuid;

pub use lifecycle::LifecycleCounts;
pub use params::{
    CategorySpec, ChannelSpec, GeneratorParams, LifecycleSpec, ParamsError, RegionSpec,
    SegmentSpec, Share, StatusShare,
};
pub use scenario::{Effects, Scenario, Switchboard};

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

struct Product {
    id: String,
    name: String,
    category: usize,
    price: f64,
}

struct Region {
    name: String,
    countries: Vec<String>,
    payment_methods: Vec<String>,
    payment_pick: WeightedAliasIndex<f64>,
}

/// A scenario that is on, from when and (unless it runs until switched
/// off) until when, in generator time.
type ScenarioWindow = (Arc<Scenario>, DateTime<Utc>, Option<DateTime<Utc>>);

/// What the scenarios that are on change, folded together.
struct Effective {
    traffic: f64,
    conversion: f64,
    /// Over `products` then `launched`.
    product_pick: WeightedAliasIndex<f64>,
    launched: Vec<Product>,
    /// Per category: (probability, min, max) of a scenario discount.
    discount: Vec<Option<(f64, f64, f64)>>,
    /// (method, failure rate, retry probability).
    outage: Option<(String, f64, f64)>,
    /// Dropout after a purchase, × this.
    churn: f64,
}

/// The generator. Not `Sync`: give each producer its own (they are cheap to
/// clone from params) or guard one with a mutex.
pub struct Generator {
    params: GeneratorParams,
    rng: ChaCha8Rng,
    clock: Clock,
    sim_now: DateTime<Utc>,
    population: lifecycle::Population,
    /// Customers who will come back, by next visit.
    calendar: lifecycle::Calendar,
    /// Key of the existing customers' traits (the population seed).
    base_key: u64,
    /// Key of the traits of customers acquired in this run (seed and start).
    run_key: u64,
    /// Shown in the ids of customers acquired in this run.
    run_tag: u32,
    /// Number of the next new visitor of this run.
    next_visitor: u64,
    counts: LifecycleCounts,
    products: Vec<Product>,
    product_weights: Vec<f64>,
    categories: Vec<String>,
    effective: Effective,
    switch: Option<Arc<Switchboard>>,
    switch_seen: u64,
    shop_seen: u64,
    /// Scenarios on, with their window in generator time: the switch's,
    /// then the scheduled ones.
    scenarios: Vec<ScenarioWindow>,
    /// Scenarios scheduled ahead (`with_scenario_at`), whatever the switch
    /// holds.
    scheduled: Vec<ScenarioWindow>,
    /// When a scenario window opens or closes next.
    next_boundary: Option<DateTime<Utc>>,
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
    /// A generator of the shop `params`: the catalogue and the existing
    /// customers come from its `population_seed`, behaviour from `seed`,
    /// timestamps from `clock`. Fails when the parameters are invalid.
    pub fn new(params: GeneratorParams, seed: u64, clock: Clock) -> Result<Self, ParamsError> {
        let mut g = Self::build(params, seed, clock)?;
        g.seed_existing_customers();
        Ok(g)
    }

    #[allow(clippy::indexing_slicing)] // indices from pickers over these tables (module docs)
    fn build(params: GeneratorParams, seed: u64, clock: Clock) -> Result<Self, ParamsError> {
        params.validate()?;
        let mut pop = ChaCha8Rng::seed_from_u64(params.population_seed);

        let regions = params
            .regions
            .iter()
            .map(|r| {
                Ok(Region {
                    name: r.name.clone(),
                    countries: r.countries.iter().map(|c| c.name.clone()).collect(),
                    payment_methods: r.payment_mix.iter().map(|c| c.name.clone()).collect(),
                    payment_pick: alias(r.payment_mix.iter().map(|c| c.weight))?,
                })
            })
            .collect::<Result<Vec<_>, ParamsError>>()?;
        let population = lifecycle::Population::new(&params)?;

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
        let effective = Effective {
            traffic: 1.0,
            conversion: 1.0,
            product_pick: alias(product_weights.iter().copied())?,
            launched: Vec::new(),
            discount: vec![None; params.categories.len()],
            outage: None,
            churn: 1.0,
        };

        let sim_now = match clock {
            Clock::Simulated(t) => t,
            Clock::Wall => Utc::now(),
        };
        // Customers acquired in the run: their ids and traits follow the
        // seed and, on a simulated clock, the start (a later backfill of the
        // same seed meets other people); on the wall clock the seed alone (a
        // seeded stream is the same stream).
        let run_key = {
            let start = match clock {
                Clock::Simulated(t) => t.timestamp_micros() as u64,
                Clock::Wall => 0,
            };
            let mut m = lifecycle::Mix::new(seed, start, 7);
            rand::RngCore::next_u64(&mut m)
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
            population,
            calendar: lifecycle::Calendar::default(),
            base_key: params.population_seed,
            run_key,
            run_tag: (run_key >> 32) as u32,
            next_visitor: 0,
            counts: LifecycleCounts::default(),
            products,
            product_weights,
            effective,
            switch: None,
            switch_seen: u64::MAX,
            shop_seen: 0,
            scenarios: Vec::new(),
            scheduled: Vec::new(),
            next_boundary: None,
            regions,
            params,
            pending: VecDeque::new(),
            sessions: 0,
        })
    }

    /// The shop the generator currently runs.
    pub fn params(&self) -> &GeneratorParams {
        &self.params
    }

    /// What the customer lifecycle did so far (and how many customers
    /// memory holds now).
    pub fn lifecycle_counts(&self) -> LifecycleCounts {
        LifecycleCounts {
            tracked: self.calendar.len() as u64,
            ..self.counts
        }
    }

    /// Puts the shop's existing customers (those of its history still
    /// active at the start) in the calendar.
    fn seed_existing_customers(&mut self) {
        let start = self.sim_now.timestamp_micros();
        let base = lifecycle::existing_base(&self.population, &self.params, self.base_key);
        let max_gap = lifecycle::days_us(self.population.spec().max_gap_days);
        for &(gap_hours, id, last) in base.iter() {
            let at = self.population.after(start, gap_hours);
            let last = start.saturating_add(last);
            if at.saturating_sub(last) > max_gap {
                continue;
            }
            self.counts.existing += 1;
            self.track(lifecycle::Due { at, id, last });
        }
    }

    /// Keeps a customer who will come back, within `max_customers`.
    fn track(&mut self, d: lifecycle::Due) {
        self.calendar.push(d);
        let max = self.population.spec().max_customers as usize;
        while self.calendar.len() > max {
            if self.calendar.evict_farthest().is_none() {
                break;
            }
            self.counts.evicted += 1;
        }
    }

    /// The id events carry for customer number `id`.
    fn customer_id(&self, id: u64) -> String {
        if id >= lifecycle::RUN_BIT {
            format!("C{:08x}-{:07}", self.run_tag, id - lifecycle::RUN_BIT)
        } else {
            format!("C{id:07}")
        }
    }

    /// The key customer number `id`'s traits derive from.
    fn key_of(&self, id: u64) -> u64 {
        if id >= lifecycle::RUN_BIT {
            self.run_key
        } else {
            self.base_key
        }
    }

    /// After customer `id`'s visit at `now`: the next one, unless they have
    /// gone `max_gap_days` since their last purchase (`last`).
    fn schedule_next_visit(&mut self, id: u64, traits: &lifecycle::Lifecycle, now: i64, last: i64) {
        let gap = lifecycle::gap_hours(&mut self.rng, self.population.visit_rate(traits));
        let at = self.population.after(now, gap);
        let max_gap = lifecycle::days_us(self.population.spec().max_gap_days);
        if at.saturating_sub(last) > max_gap {
            self.counts.lapsed += 1;
            return;
        }
        self.track(lifecycle::Due { at, id, last });
    }

    /// Follows the shop and scenarios of `switch` from the next session on.
    /// The generator is taken to run the shop the switchboard holds now
    /// (if any): only later shops rebuild it.
    pub fn with_switch(mut self, switch: Arc<Switchboard>) -> Self {
        self.shop_seen = switch.shop().map_or(0, |(v, _)| v);
        self.switch = Some(switch);
        self.switch_seen = u64::MAX;
        self
    }

    /// Schedules scenario `s` from `from` in generator time, for its own
    /// duration (or for good). Unlike a switch, which acts from the next
    /// session on, a scheduled window is known ahead: on a simulated clock
    /// the sessions begun before it that pay during it pay into it (a payment
    /// outage fails them from its first minute).
    pub fn with_scenario_at(mut self, s: Scenario, from: DateTime<Utc>) -> Result<Self, String> {
        check_scenario(&self.params, &s)?;
        let until = s
            .duration()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| from + d);
        self.scheduled.push((Arc::new(s), from, until));
        self.scenarios.extend(self.scheduled.last().cloned());
        let now = match self.clock {
            Clock::Wall => Utc::now(),
            Clock::Simulated(_) => self.sim_now,
        };
        self.apply_scenarios(now);
        Ok(self)
    }

    /// Whether `s` can apply to this shop (the categories and payment method
    /// it names exist).
    pub fn check_scenario(&self, s: &Scenario) -> Result<(), String> {
        check_scenario(&self.params, s)
    }

    /// Traffic multiplier of the scenarios on (a paced producer scales its
    /// rate by it).
    pub(crate) fn traffic(&self) -> f64 {
        self.effective.traffic
    }

    #[cfg(test)]
    /// Names of the scenarios in effect now.
    pub(crate) fn scenarios_in_effect(&self) -> Vec<String> {
        let now = self.sim_now;
        self.scenarios
            .iter()
            .filter(|(_, from, until)| window_open(*from, *until, now))
            .map(|(s, _, _)| s.scenario.clone())
            .collect()
    }

    /// Picks up switch changes and scenario windows opening or closing.
    fn refresh_scenarios(&mut self, now: DateTime<Utc>) {
        let mut changed = false;
        if let Some(sw) = self.switch.clone() {
            let v = sw.version();
            if v != self.switch_seen {
                self.switch_seen = v;
                if let Some((version, shop)) = sw.shop().filter(|(sv, _)| *sv != self.shop_seen) {
                    self.shop_seen = version;
                    self.replace_shop((*shop).clone());
                }
                let on = sw.active();
                let mut windows = Vec::with_capacity(on.len());
                for a in on {
                    if let Err(e) = check_scenario(&self.params, &a.scenario) {
                        tracing::warn!("scenario {:?} ignored: {e}", a.scenario.scenario);
                        continue;
                    }
                    // Keep the window of a scenario that stays on.
                    let from = self
                        .scenarios
                        .iter()
                        .find(|(s, _, _)| Arc::ptr_eq(s, &a.scenario))
                        .map_or(now, |(_, f, _)| *f);
                    let until = a
                        .scenario
                        .duration()
                        .and_then(|d| chrono::Duration::from_std(d).ok())
                        .map(|d| from + d);
                    windows.push((a.scenario, from, until));
                }
                windows.extend(self.scheduled.iter().cloned());
                self.scenarios = windows;
                changed = true;
            }
        }
        if changed || self.next_boundary.is_some_and(|b| now >= b) {
            self.apply_scenarios(now);
        }
    }

    /// Rebuilds customers and catalogue from `params`; the behaviour stream,
    /// the clock and the scenarios go on.
    fn replace_shop(&mut self, params: GeneratorParams) {
        match Generator::build(params, 0, self.clock) {
            Ok(mut fresh) => {
                // The customers stay (their traits follow the new shop's tables).
                fresh.calendar = std::mem::take(&mut self.calendar);
                fresh.base_key = self.base_key;
                fresh.run_key = self.run_key;
                fresh.run_tag = self.run_tag;
                fresh.next_visitor = self.next_visitor;
                fresh.counts = self.counts;
                fresh.rng = self.rng.clone();
                fresh.sim_now = self.sim_now;
                fresh.pending = std::mem::take(&mut self.pending);
                fresh.sessions = self.sessions;
                fresh.switch = self.switch.take();
                fresh.switch_seen = self.switch_seen;
                fresh.shop_seen = self.shop_seen;
                fresh.scenarios = std::mem::take(&mut self.scenarios);
                *self = fresh;
                tracing::info!("generator: new shop in effect");
            }
            Err(e) => tracing::warn!("generator: new shop refused, keeping the old one: {e}"),
        }
    }

    /// Folds the scenarios whose window holds `now` into the effective tables.
    #[allow(clippy::indexing_slicing)] // indices from pickers over these tables (module docs)
    fn apply_scenarios(&mut self, now: DateTime<Utc>) {
        let mut next: Option<DateTime<Utc>> = None;
        let mut on = Vec::new();
        for (s, from, until) in &self.scenarios {
            for b in [Some(*from), *until].into_iter().flatten() {
                if b > now {
                    next = Some(next.map_or(b, |n| n.min(b)));
                }
            }
            if window_open(*from, *until, now) {
                on.push(Arc::clone(s));
            }
        }
        self.next_boundary = next;
        let cat_index: HashMap<&str, usize> = self
            .categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut e = Effective {
            traffic: 1.0,
            conversion: 1.0,
            product_pick: self.effective.product_pick.clone(),
            launched: Vec::new(),
            discount: vec![None; self.categories.len()],
            outage: None,
            churn: 1.0,
        };
        let mut demand = vec![1.0; self.categories.len()];
        let mut launches = Vec::new();
        for s in &on {
            let fx = &s.effects;
            e.traffic *= fx.traffic;
            e.conversion *= fx.conversion;
            e.churn *= fx.churn;
            for (c, m) in &fx.categories {
                if let Some(&i) = cat_index.get(c.as_str()) {
                    demand[i] *= m;
                }
            }
            if let Some(d) = &fx.discount {
                for (i, slot) in e.discount.iter_mut().enumerate() {
                    if d.categories.is_empty() || d.categories.contains(&self.categories[i]) {
                        *slot = Some((d.probability, d.min_fraction, d.max_fraction));
                    }
                }
            }
            if let Some(o) = &fx.payment_outage {
                e.outage = Some((o.method.clone(), o.failure_rate, o.retry_probability));
            }
            if let Some(l) = &fx.launch {
                launches.push((s.scenario.clone(), l.clone()));
            }
        }
        let mut weights: Vec<f64> = self
            .products
            .iter()
            .zip(&self.product_weights)
            .map(|(p, w)| w * demand[p.category])
            .collect();
        let base_total: f64 = weights.iter().sum();
        let share_total: f64 = launches.iter().map(|(_, l)| l.share).sum::<f64>().min(0.95);
        for (li, (name, l)) in launches.iter().enumerate() {
            let Some(&ci) = cat_index.get(l.category.as_str()) else {
                continue;
            };
            // The launched products take `share` of all demand.
            let total = if share_total > 0.0 {
                base_total * l.share / (1.0 - share_total)
            } else {
                0.0
            };
            let tag = name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(6)
                .collect::<String>()
                .to_ascii_uppercase();
            for k in 0..l.products {
                e.launched.push(Product {
                    id: format!("N{li}{tag}{k:03}"),
                    name: if l.products == 1 {
                        l.name.clone()
                    } else {
                        format!("{} {}", l.name, k + 1)
                    },
                    category: ci,
                    price: round2(l.price),
                });
                weights.push(total / f64::from(l.products));
            }
        }
        if let Ok(pick) = alias(weights) {
            e.product_pick = pick;
        } else {
            tracing::warn!("scenarios leave no product to sell; keeping the catalogue's demand");
            e.launched.clear();
            if let Ok(pick) = alias(self.product_weights.iter().copied()) {
                e.product_pick = pick;
            }
        }
        self.effective = e;
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
        let hour = self.hour_norm.get(t.hour() as usize).copied();
        let day = self
            .weekday_norm
            .get(t.weekday().num_days_from_monday() as usize)
            .copied();
        (hour.unwrap_or(1.0), day.unwrap_or(1.0))
    }

    /// Advances the simulated clock by one seasonal inter-arrival time.
    ///
    /// On the wall clock the simulated clock still advances: it is the
    /// customers' clock (who comes back when), so that a seeded stream is the
    /// same stream whatever the pace it is read at.
    fn next_session_start(&mut self) -> DateTime<Utc> {
        let (hour, day) = self.seasonality(self.sim_now);
        let rate_per_sec =
            self.params.sessions_per_hour / 3600.0 * hour * day * self.effective.traffic;
        let u: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        let gap = -u.ln() / rate_per_sec.max(1e-9);
        self.sim_now += Duration::microseconds((gap * 1e6) as i64);
        match self.clock {
            Clock::Wall => Utc::now(),
            Clock::Simulated(_) => self.sim_now,
        }
    }

    #[allow(clippy::indexing_slicing)] // indices from pickers over these tables (module docs)
    fn simulate_session(&mut self) {
        self.sessions += 1;
        if self.switch.is_some() || self.next_boundary.is_some() {
            let now = match self.clock {
                Clock::Wall => Utc::now(),
                Clock::Simulated(_) => self.sim_now,
            };
            self.refresh_scenarios(now);
        }
        let start = self.next_session_start();
        let now = self.sim_now.timestamp_micros();
        // A returning customer whose visit is due, or a new visitor.
        let due = self.calendar.pop_due(now);
        let id = match due {
            Some(d) => {
                self.counts.returning_visits += 1;
                d.id
            }
            None => {
                self.counts.new_visitors += 1;
                self.next_visitor += 1;
                lifecycle::RUN_BIT + self.next_visitor - 1
            }
        };
        let key = self.key_of(id);
        let traits = self.population.lifecycle(key, id);
        let looks = self.population.looks(key, id, traits.segment);
        let customer_id = self.customer_id(id);
        let length = self.session_len.sample(&mut self.rng).max(10.0);
        let (start, end) = match self.clock {
            // Live: the session is ending now; nothing is stamped in the future.
            Clock::Wall => (start - Duration::milliseconds((length * 1e3) as i64), start),
            Clock::Simulated(_) => (start, start + Duration::milliseconds((length * 1e3) as i64)),
        };
        let channel_i = self.channel_pick.sample(&mut self.rng);
        let channel = self.params.channels[channel_i].channel.clone();
        let (hour, _) = self.seasonality(start);
        let lift = 1.0 + self.params.seasonal_conversion_lift * (hour - 1.0);
        let p_convert = (self.params.channels[channel_i].conversion
            * lift
            * traits.conversion
            * self.effective.conversion)
            .clamp(0.0, 1.0);
        let p_more = 1.0 - 1.0 / self.params.mean_page_views;
        let mut page_views = 1;
        while page_views < 500 && self.rng.random_bool(p_more) {
            page_views += 1;
        }
        let session_id = format!("S{:016x}", self.rng.random::<u64>());

        let mut placed = 0;
        if self.rng.random_bool(p_convert) {
            placed = 1;
            while placed < 5 && self.rng.random_bool(self.params.extra_order_probability) {
                placed += 1;
            }
        }
        let mut orders = placed;
        for _ in 0..placed {
            let at = match self.clock {
                Clock::Wall => end,
                Clock::Simulated(_) => {
                    let f: f64 = self.rng.random_range(0.3..1.0);
                    start + Duration::milliseconds((length * f * 1e3) as i64)
                }
            };
            let sale = self.sale(&looks, &customer_id, &session_id, channel.clone(), at);
            let retry = self.retry_after_outage(&sale, looks.region);
            self.pending.push_back(Event::Sale(sale));
            if let Some(r) = retry {
                self.pending.push_back(Event::Sale(r));
                orders += 1;
            }
        }
        if placed > 0 {
            if due.is_none() {
                self.counts.acquired += 1;
            }
            let leave = (traits.dropout * self.effective.churn).clamp(0.0, 1.0);
            if self.rng.random_bool(leave) {
                self.counts.dropped += 1;
            } else {
                self.schedule_next_visit(id, &traits, now, now);
            }
        } else if let Some(d) = due {
            self.schedule_next_visit(id, &traits, now, d.last);
        }
        let region = &self.regions[looks.region];
        self.pending.push_back(Event::Session(SessionEvent {
            session_id,
            customer_id,
            started_at: start,
            ended_at: end,
            region: region.name.clone(),
            country: region.countries[looks.country].clone(),
            channel,
            page_views,
            orders,
        }));
    }

    #[allow(clippy::indexing_slicing)] // indices from pickers over these tables (module docs)
    fn sale(
        &mut self,
        c: &lifecycle::Looks,
        customer_id: &str,
        session_id: &str,
        channel: Channel,
        at: DateTime<Utc>,
    ) -> SaleEvent {
        let rng = &mut self.rng;
        let region = &self.regions[c.region];
        let pi = self.effective.product_pick.sample(rng);
        let p = match self.products.get(pi) {
            Some(p) => p,
            None => &self.effective.launched[pi - self.products.len()],
        };
        let lambda = (self.params.mean_quantity - 1.0).max(0.0) * c.spend;
        let quantity = 1 + poisson(rng, lambda, 49) as i32;
        let gross = f64::from(quantity) * p.price;
        let discount = match self.effective.discount[p.category] {
            Some((prob, lo, hi)) if rng.random_bool(prob) => {
                round2(gross * rng.random_range(lo..=hi.max(lo)))
            }
            Some(_) => 0.0,
            None if rng.random_bool(self.params.discount_probability) => {
                let max = self.params.max_discount_fraction.max(0.05);
                round2(gross * rng.random_range(0.05..=max))
            }
            None => 0.0,
        };
        let mut status: Status = self.params.status_mix[self.status_pick.sample(rng)]
            .status
            .clone();
        let payment = &region.payment_methods[region.payment_pick.sample(rng)];
        if let Some((method, rate, _)) =
            outage_at(&self.clock, &self.effective, &self.scenarios, at)
        {
            if &method == payment && rng.random_bool(rate) {
                status = Status::Failed;
            }
        }
        SaleEvent {
            transaction_id: random_uuid(rng),
            occurred_at: at,
            customer_id: customer_id.to_owned(),
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

impl Generator {
    /// A customer whose payment failed in an outage may pay again at once
    /// with another of their region's methods.
    #[allow(clippy::indexing_slicing)] // indices from pickers over these tables (module docs)
    fn retry_after_outage(&mut self, failed: &SaleEvent, region: usize) -> Option<SaleEvent> {
        let (method, _, retry) = outage_at(
            &self.clock,
            &self.effective,
            &self.scenarios,
            failed.occurred_at,
        )?;
        if failed.status != Status::Failed || failed.payment_method != method {
            return None;
        }
        if !self.rng.random_bool(retry) {
            return None;
        }
        let region = &self.regions[region];
        let other = (0..10)
            .map(|_| &region.payment_methods[region.payment_pick.sample(&mut self.rng)])
            .find(|m| **m != method)?
            .clone();
        let status = self.params.status_mix[self.status_pick.sample(&mut self.rng)]
            .status
            .clone();
        let at = match self.clock {
            Clock::Wall => failed.occurred_at,
            Clock::Simulated(_) => failed.occurred_at + Duration::seconds(20),
        };
        Some(SaleEvent {
            transaction_id: random_uuid(&mut self.rng),
            occurred_at: at,
            payment_method: other,
            status: if status == Status::Failed {
                Status::Completed
            } else {
                status
            },
            ..failed.clone()
        })
    }
}

/// Whether a scenario scheduled from `from` until `until` (open-ended
/// without one) is in effect at `at`.
fn window_open(from: DateTime<Utc>, until: Option<DateTime<Utc>>, at: DateTime<Utc>) -> bool {
    from <= at && until.is_none_or(|u| at < u)
}

/// The payment outage in effect when a payment is made at `at`: the method,
/// its failure rate and the retry probability. A provider fails the payments
/// made while it is down, whenever their sessions began: on a simulated
/// clock the scenario windows are read at the payment's own time (a session
/// begun before the outage pays into it; one begun during it may pay after
/// it ended). On the wall clock a payment is made now, so the scenarios in
/// effect now decide.
fn outage_at(
    clock: &Clock,
    effective: &Effective,
    windows: &[ScenarioWindow],
    at: DateTime<Utc>,
) -> Option<(String, f64, f64)> {
    match clock {
        Clock::Wall => effective.outage.clone(),
        Clock::Simulated(_) => windows
            .iter()
            .filter(|(_, from, until)| window_open(*from, *until, at))
            .filter_map(|(s, _, _)| s.effects.payment_outage.as_ref())
            .next_back()
            .map(|o| (o.method.clone(), o.failure_rate, o.retry_probability)),
    }
}

/// Whether scenario `s` names only categories and payment methods the shop has.
pub fn check_scenario(params: &GeneratorParams, s: &Scenario) -> Result<(), String> {
    let cats: Vec<&str> = params.categories.iter().map(|c| c.name.as_str()).collect();
    let unknown = |c: &str| {
        format!(
            "unknown category {c:?}; the shop's categories: {}",
            cats.join(", ")
        )
    };
    let fx = &s.effects;
    for c in fx.categories.keys() {
        if !cats.contains(&c.as_str()) {
            return Err(unknown(c));
        }
    }
    if let Some(d) = &fx.discount {
        if let Some(c) = d.categories.iter().find(|c| !cats.contains(&c.as_str())) {
            return Err(unknown(c));
        }
    }
    if let Some(l) = &fx.launch {
        if !cats.contains(&l.category.as_str()) {
            return Err(unknown(&l.category));
        }
    }
    if let Some(o) = &fx.payment_outage {
        let known = params
            .regions
            .iter()
            .any(|r| r.payment_mix.iter().any(|m| m.name == o.method));
        if !known {
            let mut all: Vec<&str> = params
                .regions
                .iter()
                .flat_map(|r| r.payment_mix.iter().map(|m| m.name.as_str()))
                .collect();
            all.sort_unstable();
            all.dedup();
            return Err(format!(
                "unknown payment method {:?}; the shop's methods: {}",
                o.method,
                all.join(", ")
            ));
        }
    }
    Ok(())
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

/// How much of a stream to take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Extent {
    /// This many events.
    Events(u64),
    /// Events until this instant of generator time (the first event at or
    /// after it is not taken).
    Until(DateTime<Utc>),
}

/// The events of `g` over `extent`.
pub fn events(g: &mut Generator, extent: Extent) -> impl Iterator<Item = Event> + '_ {
    let mut taken = 0u64;
    std::iter::from_fn(move || {
        let e = match extent {
            Extent::Events(n) if taken >= n => return None,
            Extent::Events(_) => g.next_event(),
            Extent::Until(t) => {
                let e = g.next_event();
                let at = match &e {
                    Event::Sale(s) => s.occurred_at,
                    Event::Session(s) => s.started_at,
                };
                if at >= t {
                    return None;
                }
                e
            }
        };
        taken += 1;
        Some(e)
    })
}

/// The customer statistics of `g`'s events over `extent` (see [`stats`]),
/// with what its lifecycle did.
pub fn customer_stats(g: &mut Generator, extent: Extent) -> stats::StatsReport {
    let mut st = stats::CustomerStats::new();
    for e in events(g, extent) {
        st.observe(&e);
    }
    stats::StatsReport {
        lifecycle: Some(g.lifecycle_counts()),
        ..st.report()
    }
}

/// Writes the events of `g` over `extent` to `out`.
pub fn write_events<W: std::io::Write>(
    g: &mut Generator,
    extent: Extent,
    format: OutputFormat,
    out: W,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    match format {
        OutputFormat::Ndjson => {
            for e in events(g, extent) {
                serde_json::to_writer(&mut out, &e)?;
                out.write_all(b"\n")?;
            }
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(CSV_HEADER)?;
            for e in events(g, extent) {
                let row: [String; 22] = match e {
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
        Generator::new(GeneratorParams::builtin(), seed, Clock::Simulated(start)).unwrap()
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
        let mut w = Generator::new(GeneratorParams::builtin(), 1, Clock::Wall).unwrap();
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
        // ~40 hours: existing customers come back, but most buyers are new.
        let existing = per_customer.keys().filter(|c| !c.contains('-')).count();
        let share = existing as f64 / per_customer.len() as f64;
        assert!(
            (0.2..0.6).contains(&share),
            "existing customers' share {share}"
        );
        // Evening peak beats the small hours.
        assert!(by_hour[20] > 3 * by_hour[3], "{by_hour:?}");
        let completed = f64::from(statuses["completed"]) / f64::from(orders);
        assert!((0.85..0.95).contains(&completed), "completed {completed}");
        assert_eq!(statuses.len(), 4);
    }

    #[test]
    fn bad_params_are_rejected_with_a_message() {
        let mut p = GeneratorParams::builtin();
        p.hour_weights.pop();
        let err = Generator::new(p, 1, Clock::Wall).err().unwrap();
        assert!(err.to_string().contains("hour_weights"), "{err}");
        let mut p = GeneratorParams::builtin();
        p.channels[0].conversion = 1.5;
        assert!(Generator::new(p, 1, Clock::Wall).is_err());
    }

    /// Sales and sessions of the first `minutes` of simulated time.
    fn window(mut g: Generator, minutes: i64) -> (Vec<SaleEvent>, u64) {
        let start = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        let end = start + Duration::minutes(minutes);
        let (mut sales, mut sessions) = (Vec::new(), 0u64);
        loop {
            match g.next_event() {
                Event::Sale(s) => sales.push(s),
                Event::Session(s) if s.started_at >= end => return (sales, sessions),
                Event::Session(_) => sessions += 1,
            }
        }
    }

    fn scenario(file: &str) -> Scenario {
        behaviour::builtin_scenarios()
            .into_iter()
            .map(Result::unwrap)
            .find(|s| s.file == file)
            .unwrap()
    }

    /// A busy shop (16× the default traffic) with `scenarios` on from the start.
    fn with(seed: u64, scenarios: &[Scenario]) -> Generator {
        let board = Switchboard::new();
        for s in scenarios {
            board.switch_on(s.clone());
        }
        let params = GeneratorParams {
            sessions_per_hour: 57_600.0,
            // A shop opening with the run: these tests look at hours.
            lifecycle: LifecycleSpec {
                history_days: 0.0,
                ..LifecycleSpec::default()
            },
            ..GeneratorParams::builtin()
        };
        let start = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        Generator::new(params, seed, Clock::Simulated(start))
            .unwrap()
            .with_switch(board)
    }

    /// Pearson's chi-square statistic of two count vectors over the same
    /// categories (a 2 × k contingency table).
    fn chi_square(a: &[f64], b: &[f64]) -> f64 {
        let (ta, tb): (f64, f64) = (a.iter().sum(), b.iter().sum());
        let n = ta + tb;
        a.iter()
            .zip(b)
            .filter(|(x, y)| *x + *y > 0.0)
            .map(|(x, y)| {
                let col = x + y;
                let (ea, eb) = (col * ta / n, col * tb / n);
                (x - ea).powi(2) / ea + (y - eb).powi(2) / eb
            })
            .sum()
    }

    fn by<K: Ord + Clone>(
        sales: &[SaleEvent],
        keys: &[K],
        f: impl Fn(&SaleEvent) -> K,
    ) -> Vec<f64> {
        keys.iter()
            .map(|k| sales.iter().filter(|s| f(s) == *k).count() as f64)
            .collect()
    }

    #[test]
    fn a_flash_sale_shifts_demand_traffic_and_discounts_measurably() {
        let cats: Vec<String> = GeneratorParams::builtin()
            .categories
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let (base, base_sessions) = window(with(11, &[]), 60);
        let (other, _) = window(with(12, &[]), 60);
        let (sale, sale_sessions) = window(with(11, &[scenario("flash_sale.rhai")]), 60);
        let cat = |s: &SaleEvent| s.category.clone();
        let (b, o, f) = (
            by(&base, &cats, cat),
            by(&other, &cats, cat),
            by(&sale, &cats, cat),
        );
        // Two seeds without it: no detectable difference (chi-square, 9 df,
        // below the p = 0.001 critical value 27.88).
        let control = chi_square(&b, &o);
        assert!(control < 27.88, "control chi-square {control}");
        // With it: far beyond any plausible chance (p << 1e-12).
        let shifted = chi_square(&b, &f);
        assert!(shifted > 200.0, "flash sale chi-square {shifted}");
        let share = |v: &[f64], c: &str| {
            v[cats.iter().position(|x| x == c).unwrap()] / v.iter().sum::<f64>()
        };
        assert!(share(&f, "Electronics") > 2.0 * share(&b, "Electronics"));
        // Traffic ×5 in its hour.
        let ratio = sale_sessions as f64 / base_sessions as f64;
        assert!((4.3..5.7).contains(&ratio), "traffic ratio {ratio}");
        // Most Electronics lines discounted by 20-40 %.
        let el: Vec<&SaleEvent> = sale
            .iter()
            .filter(|s| s.category == "Electronics")
            .collect();
        let discounted = el.iter().filter(|s| s.discount > 0.0).count() as f64 / el.len() as f64;
        assert!((0.8..0.9).contains(&discounted), "discounted {discounted}");
        for s in el.iter().filter(|s| s.discount > 0.0) {
            let gross = f64::from(s.quantity) * s.unit_price;
            let frac = s.discount / gross;
            assert!((0.195..=0.405).contains(&frac), "{frac}");
        }
    }

    /// A provider fails the payments made while it is down, from its first
    /// minute to its last: sessions begun before a scheduled outage pay into
    /// it, and the payments made after it go through again.
    #[test]
    fn a_scheduled_payment_outage_fails_payments_from_its_first_minute_to_its_last() {
        let params = GeneratorParams {
            sessions_per_hour: 230_400.0,
            lifecycle: LifecycleSpec {
                history_days: 0.0,
                ..LifecycleSpec::default()
            },
            ..GeneratorParams::builtin()
        };
        let start = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        let from = start + Duration::minutes(20);
        let until = from + Duration::minutes(30);
        let mut g = Generator::new(params, 5, Clock::Simulated(start))
            .unwrap()
            .with_scenario_at(scenario("payment_outage.rhai"), from)
            .unwrap();
        let mut sales = Vec::new();
        loop {
            match g.next_event() {
                Event::Sale(s) => sales.push(s),
                Event::Session(s) if s.started_at >= until + Duration::minutes(10) => break,
                Event::Session(_) => {}
            }
        }
        let paypal_failed = |a: DateTime<Utc>, b: DateTime<Utc>| {
            let of: Vec<_> = sales
                .iter()
                .filter(|s| s.payment_method == "paypal" && (a..b).contains(&s.occurred_at))
                .collect();
            assert!(of.len() > 60, "{} paypal payments", of.len());
            of.iter().filter(|s| s.status == Status::Failed).count() as f64 / of.len() as f64
        };
        let first = paypal_failed(from, from + Duration::minutes(2));
        assert!((0.78..0.99).contains(&first), "first two minutes {first}");
        let last = paypal_failed(until - Duration::minutes(2), until);
        assert!((0.78..0.99).contains(&last), "last two minutes {last}");
        let before = paypal_failed(from - Duration::minutes(5), from);
        assert!(before < 0.1, "before {before}");
        let after = paypal_failed(until, until + Duration::minutes(5));
        assert!(after < 0.1, "after {after}");
        // A scenario the shop cannot run is refused up front.
        let mut bad = scenario("payment_outage.rhai");
        bad.effects.payment_outage.as_mut().unwrap().method = "iou".into();
        let g = Generator::new(GeneratorParams::builtin(), 5, Clock::Simulated(start)).unwrap();
        assert!(g.with_scenario_at(bad, from).is_err());
    }

    #[test]
    fn a_payment_outage_fails_its_method_and_customers_retry_elsewhere() {
        let (base, _) = window(with(21, &[]), 30);
        let (out, _) = window(with(21, &[scenario("payment_outage.rhai")]), 30);
        // The outage lasts 30 minutes; payments after it go through.
        let end = Utc.with_ymd_and_hms(2026, 11, 2, 0, 30, 0).unwrap();
        let failed = |v: &[SaleEvent], m: &str| {
            let of: Vec<_> = v
                .iter()
                .filter(|s| s.payment_method == m && s.occurred_at < end)
                .collect();
            of.iter().filter(|s| s.status == Status::Failed).count() as f64 / of.len() as f64
        };
        assert!(failed(&base, "paypal") < 0.1, "{}", failed(&base, "paypal"));
        let f = failed(&out, "paypal");
        assert!((0.85..0.95).contains(&f), "paypal failing {f}");
        // Other methods are untouched; failed payers come back on another.
        assert!(failed(&out, "credit_card") < 0.1);
        let retries = out
            .windows(2)
            .filter(|w| {
                w[0].status == Status::Failed
                    && w[0].payment_method == "paypal"
                    && w[1].session_id == w[0].session_id
                    && w[1].product_id == w[0].product_id
                    && w[1].payment_method != "paypal"
            })
            .count() as f64;
        let paypal_failed = out
            .iter()
            .filter(|s| s.payment_method == "paypal" && s.status == Status::Failed)
            .count() as f64;
        let r = retries / paypal_failed;
        assert!((0.4..0.6).contains(&r), "retry share {r}");
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        for s in &out {
            assert_eq!(Event::Sale(s.clone()).validate(now), vec![]);
        }
    }

    #[test]
    fn a_product_launch_sells_the_new_product_for_its_share() {
        let (sales, _) = window(with(31, &[scenario("product_launch.rhai")]), 120);
        let new: Vec<_> = sales
            .iter()
            .filter(|s| s.product_name == "Nova Phone X")
            .collect();
        let share = new.len() as f64 / sales.len() as f64;
        assert!((0.17..0.23).contains(&share), "launch share {share}");
        assert!(new
            .iter()
            .all(|s| s.category == "Electronics" && s.unit_price == 699.0));
        let ids: std::collections::HashSet<_> = new.iter().map(|s| s.product_id.clone()).collect();
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn scenarios_switch_on_and_off_mid_stream_and_end_by_themselves() {
        let board = Switchboard::new();
        let mut g = sim(41).with_switch(Arc::clone(&board));
        let electronics = |g: &mut Generator, n: usize| {
            let mut sales = 0;
            let mut el = 0;
            while sales < n {
                if let Event::Sale(s) = g.next_event() {
                    sales += 1;
                    el += usize::from(s.category == "Electronics");
                }
            }
            el as f64 / n as f64
        };
        let before = electronics(&mut g, 3_000);
        let mut flash = scenario("flash_sale.rhai");
        flash.duration_minutes = None;
        board.switch_on(flash.clone());
        let during = electronics(&mut g, 3_000);
        assert_eq!(g.scenarios_in_effect(), vec!["Flash sale".to_owned()]);
        assert!((g.traffic() - 5.0).abs() < 1e-9);
        assert!(board.switch_off("Flash sale"));
        let after = electronics(&mut g, 3_000);
        assert!(during > 2.0 * before, "{before} -> {during}");
        assert!(after < 0.6 * during, "{during} -> {after}");
        assert!((g.traffic() - 1.0).abs() < 1e-9);
        // With a duration it ends by itself (simulated time).
        let mut short = scenario("flash_sale.rhai");
        short.duration_minutes = Some(5.0);
        board.switch_on(short);
        let _ = electronics(&mut g, 10);
        assert_eq!(g.scenarios_in_effect().len(), 1);
        let _ = electronics(&mut g, 3_000);
        assert!(g.scenarios_in_effect().is_empty());
        assert!((g.traffic() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_new_shop_takes_effect_mid_stream() {
        let board = Switchboard::new();
        let mut g = sim(51).with_switch(Arc::clone(&board));
        for _ in 0..1_000 {
            g.next_event();
        }
        let tracked = g.lifecycle_counts().tracked;
        board.set_shop(GeneratorParams {
            currency: "EUR".into(),
            ..GeneratorParams::builtin()
        });
        let mut currencies = std::collections::HashSet::new();
        for _ in 0..5_000 {
            if let Event::Sale(s) = g.next_event() {
                currencies.insert(s.currency);
            }
        }
        assert_eq!(currencies.len(), 1, "{currencies:?}");
        assert!(currencies.contains("EUR"));
        assert_eq!(g.params().currency, "EUR");
        // The customers stayed.
        let after = g.lifecycle_counts();
        assert!(
            after.tracked + after.returning_visits >= tracked,
            "{after:?}"
        );
    }

    #[test]
    fn scenarios_naming_what_the_shop_lacks_are_refused() {
        let mut s = scenario("flash_sale.rhai");
        s.effects.categories.insert("Spaceships".into(), 2.0);
        let e = check_scenario(&GeneratorParams::builtin(), &s).unwrap_err();
        assert!(e.contains("Spaceships") && e.contains("Electronics"), "{e}");
        let mut s = scenario("payment_outage.rhai");
        s.effects.payment_outage.as_mut().unwrap().method = "iou".into();
        let e = check_scenario(&GeneratorParams::builtin(), &s).unwrap_err();
        assert!(e.contains("iou") && e.contains("paypal"), "{e}");
    }

    /// `days` of backfill from 2026-01-05 at `sessions_per_hour`, through
    /// the stats collector.
    fn backfill(
        sessions_per_hour: f64,
        days: i64,
        lifecycle: LifecycleSpec,
        seed: u64,
    ) -> (stats::StatsReport, LifecycleCounts) {
        let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
        let params = GeneratorParams {
            sessions_per_hour,
            lifecycle,
            ..GeneratorParams::builtin()
        };
        let mut g = Generator::new(params, seed, Clock::Simulated(start)).unwrap();
        let end = start + Duration::days(days);
        let mut st = stats::CustomerStats::new();
        loop {
            let e = g.next_event();
            if let Event::Session(s) = &e {
                if s.started_at >= end {
                    break;
                }
            }
            st.observe(&e);
        }
        (st.report(), g.lifecycle_counts())
    }

    #[test]
    fn customers_arrive_return_and_leave_alike_at_rates_a_hundredfold_apart() {
        let (low, _) = backfill(25.0, 90, LifecycleSpec::default(), 5);
        let (high, counts) = backfill(2_500.0, 90, LifecycleSpec::default(), 6);
        assert!(low.customers > 5_000, "{low}");
        assert!(high.customers > 100 * low.customers / 2, "{high}");
        for r in [&low, &high] {
            // Most customers buy once in 90 days; a minority comes back.
            assert!((0.78..0.92).contains(&r.one_order_share), "{r}");
            let o = &r.orders_per_customer;
            assert!((1.08..1.40).contains(&o.mean), "{r}");
            assert_eq!(o.p50, 1.0, "{r}");
            assert!((2.0..=8.0).contains(&o.p99), "{r}");
            // Repeat orders weeks apart, not hours.
            assert!((10.0..45.0).contains(&r.days_between_orders.p50), "{r}");
            assert!(r.days_between_orders_p10 > 1.0, "{r}");
            // New customers place most but not all of a day's orders.
            let n = r.new_customer_share_of_daily_orders.mean;
            assert!((0.45..0.75).contains(&n), "{r}");
            assert!(
                r.back_within_30_days > 0.03 && r.back_within_30_days < 0.2,
                "{r}"
            );
        }
        // The same shop at either rate: shares within a few points.
        let close = |a: f64, b: f64, tol: f64, what: &str| {
            assert!((a - b).abs() < tol, "{what}: {a} vs {b}\n{low}\n{high}");
        };
        close(low.one_order_share, high.one_order_share, 0.03, "one order");
        close(
            low.orders_per_customer.mean,
            high.orders_per_customer.mean,
            0.06,
            "orders per customer",
        );
        close(
            low.new_customer_share_of_daily_orders.mean,
            high.new_customer_share_of_daily_orders.mean,
            0.04,
            "new-customer share",
        );
        close(
            low.days_between_orders.p50,
            high.days_between_orders.p50,
            6.0,
            "days between orders",
        );
        // The biggest customer is a person, not the simulation.
        assert!(high.orders_per_customer.max < 60.0, "{high}");
        // A weekly cohort's share ordering again falls week by week.
        let weeks = 9;
        let mean_at = |k: usize| {
            let v: Vec<f64> = high
                .cohorts
                .iter()
                .filter_map(|c| c.retention.get(k).copied())
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        for k in 1..weeks {
            assert!(
                mean_at(k + 1) <= mean_at(k) + 0.002,
                "week {k}: {} then {}\n{high}",
                mean_at(k),
                mean_at(k + 1)
            );
        }
        assert!(mean_at(weeks) < 0.7 * mean_at(1), "{high}");
        assert!(counts.existing > 0 && counts.acquired > 0 && counts.evicted == 0);
    }

    #[test]
    fn the_most_extreme_shop_the_checks_allow_starts_quickly_and_runs() {
        // Customers who never leave and buy constantly, rates near zero for
        // most, ten years of history at the highest traffic: start-up work
        // is bounded, nothing divides by zero or schedules at once forever,
        // and memory stays within its bound.
        for (rate_shape, dropout_concentration) in [(0.01, 0.1), (100.0, 10_000.0)] {
            let lifecycle = LifecycleSpec {
                purchases_per_year: 10_000.0,
                rate_shape,
                dropout: 0.0,
                dropout_concentration,
                max_gap_days: 3_650.0,
                history_days: 3_650.0,
                max_customers: 20_000,
            };
            let params = GeneratorParams {
                sessions_per_hour: 100_000_000.0,
                lifecycle,
                ..GeneratorParams::builtin()
            };
            let t = std::time::Instant::now();
            let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
            let mut g = Generator::new(params, 9, Clock::Simulated(start)).unwrap();
            let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
            for _ in 0..50_000 {
                let e = g.next_event();
                assert_eq!(e.validate(now), vec![], "{e:?}");
            }
            let c = g.lifecycle_counts();
            assert!(c.tracked <= 20_000, "{c:?}");
            eprintln!("shape {rate_shape}: {:?}, {c:?}", t.elapsed());
            assert!(
                t.elapsed() < std::time::Duration::from_secs(60),
                "{:?}",
                t.elapsed()
            );
        }
    }

    #[test]
    fn memory_stays_flat_over_a_long_run_and_within_the_bound() {
        let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
        let params = GeneratorParams {
            sessions_per_hour: 300.0,
            ..GeneratorParams::builtin()
        };
        let mut g = Generator::new(params, 3, Clock::Simulated(start)).unwrap();
        let mut tracked = Vec::new();
        let mut next = start + Duration::days(60);
        loop {
            if let Event::Session(s) = g.next_event() {
                if s.started_at >= next {
                    tracked.push(g.lifecycle_counts().tracked as f64);
                    if tracked.len() == 12 {
                        break;
                    }
                    next += Duration::days(60);
                }
            }
        }
        // Two years: what memory holds neither grows nor drains.
        let (lo, hi) = tracked
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(
            hi < 1.25 * lo,
            "customers kept in memory over time: {tracked:?}"
        );
        let c = g.lifecycle_counts();
        // Memory holds who will come back, not everyone ever seen.
        assert!(c.new_visitors + c.existing > 20 * c.tracked, "{c:?}");
        eprintln!("kept in memory every 60 days: {tracked:?}");
        // With a small bound it holds, and the farthest visits go first.
        let (r, c) = backfill(
            2_500.0,
            10,
            LifecycleSpec {
                max_customers: 5_000,
                ..LifecycleSpec::default()
            },
            4,
        );
        assert!(c.tracked <= 5_000 && c.evicted > 0, "{c:?}");
        assert!(r.customers > 10_000, "{r}");
    }

    #[test]
    fn a_bad_experience_drives_customers_away_and_ids_follow_seed_and_start() {
        let mut churn = scenario("bad_experience.rhai");
        churn.duration_minutes = None;
        let run = |scenarios: &[Scenario]| {
            let mut g = with(61, scenarios);
            for _ in 0..200_000 {
                g.next_event();
            }
            let c = g.lifecycle_counts();
            c.dropped as f64 / (c.acquired + c.returning_visits) as f64
        };
        let (base, bad) = (run(&[]), run(&[churn]));
        assert!(bad > 1.3 * base, "dropout share {base} -> {bad}");
        // A campaign (traffic ×2) brings new visitors, not more returns.
        let mut campaign = scenario("campaign.rhai");
        campaign.duration_minutes = None;
        let new_share = |scenarios: Vec<Scenario>| {
            let board = Switchboard::new();
            for s in scenarios {
                board.switch_on(s);
            }
            let mut g = sim(62).with_switch(board);
            for _ in 0..100_000 {
                g.next_event();
            }
            let c = g.lifecycle_counts();
            c.new_visitors as f64 / (c.new_visitors + c.returning_visits) as f64
        };
        let (plain, ads) = (new_share(vec![]), new_share(vec![campaign]));
        assert!((0.5..0.8).contains(&plain), "new visitors' share {plain}");
        assert!(ads > plain + 0.1, "new visitors' share {plain} -> {ads}");
        // A new run (another start) does not reuse the ids of new customers.
        let ids = |start: DateTime<Utc>| {
            let mut g =
                Generator::new(GeneratorParams::builtin(), 1, Clock::Simulated(start)).unwrap();
            (0..2_000)
                .filter_map(|_| match g.next_event() {
                    Event::Session(s) if s.customer_id.contains('-') => Some(s.customer_id),
                    _ => None,
                })
                .collect::<HashSet<_>>()
        };
        let a = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let b = Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap();
        assert_eq!(ids(a), ids(a));
        assert!(ids(a).is_disjoint(&ids(b)));
    }
}

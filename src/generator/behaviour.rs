//! Behaviour scripts: a shop script (`scripts/generator/default.rhai`) gives
//! the [`GeneratorParams`]; scenario scripts (`scripts/generator/*.rhai`
//! whose result has a `scenario` name) give [`Scenario`]s, switched on and
//! off while the generator runs.
//!
//! A script runs once, when it is loaded; the Rust generator then makes every
//! event natively from its result.

use std::path::Path;
use std::sync::OnceLock;

use super::params::GeneratorParams;
use super::scenario::Scenario;
use crate::script::{from_json, to_json, Limits, Sandbox, ScriptError};

/// The built-in shop script (the default `scripts/generator/default.rhai`).
pub(crate) const BUILTIN_SHOP: &str = include_str!("../../scripts/generator/default.rhai");
/// The scenario scripts shipped with salespulse: (file name, source).
pub(crate) const BUILTIN_SCENARIOS: [(&str, &str); 5] = [
    (
        "flash_sale.rhai",
        include_str!("../../scripts/generator/flash_sale.rhai"),
    ),
    (
        "payment_outage.rhai",
        include_str!("../../scripts/generator/payment_outage.rhai"),
    ),
    (
        "product_launch.rhai",
        include_str!("../../scripts/generator/product_launch.rhai"),
    ),
    (
        "campaign.rhai",
        include_str!("../../scripts/generator/campaign.rhai"),
    ),
    (
        "bad_experience.rhai",
        include_str!("../../scripts/generator/bad_experience.rhai"),
    ),
];

/// Data limits of shop and scenario scripts: room for the largest shop
/// [`GeneratorParams::check`] accepts, and a bound on how deep a value can
/// nest (Rhai counts nested items against these).
const SHOP_MAX_ITEMS: usize = 100_000;

/// Stack of the thread a shop or scenario script runs on: a value nested as
/// deep as [`SHOP_MAX_ITEMS`] allows is built, copied and dropped there
/// (reserved address space; only what is used is memory).
const SCRIPT_STACK: usize = 256 << 20;

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        Sandbox::new(Limits {
            max_array_size: SHOP_MAX_ITEMS,
            max_map_size: SHOP_MAX_ITEMS,
            ..Limits::default()
        })
    })
}

/// The built-in shop, evaluated once.
pub fn builtin() -> &'static GeneratorParams {
    static P: OnceLock<GeneratorParams> = OnceLock::new();
    P.get_or_init(|| {
        match eval("default.rhai", BUILTIN_SHOP)
            .and_then(|v| shop_from_json("default.rhai", v, None))
        {
            Ok(p) => p,
            Err(e) => {
                // Not reachable with the shipped script (a test loads it); the
                // generator still works on a bare shop.
                tracing::error!("the built-in shop script failed: {e}");
                GeneratorParams::fallback()
            }
        }
    })
}

/// What a behaviour script is.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// A shop script: the parameters it gives, over the built-in shop's.
    Shop(Box<GeneratorParams>),
    /// A scenario script (its result has a `scenario` name), checked.
    Scenario(Box<Scenario>),
}

/// Runs a behaviour script in this process, on a thread of its own whose
/// stack holds the deepest value the limits allow, so that a script nesting
/// data (`a = [a]` in a loop) ends with an error instead of overflowing the
/// caller's stack; only a shallow JSON value comes back.
fn eval(file: &str, source: &str) -> Result<serde_json::Value, ScriptError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("behaviour-script".into())
            .stack_size(SCRIPT_STACK)
            .spawn_scoped(scope, || {
                let s = sandbox();
                let ast = s.compile(file, source)?;
                let v = s.eval_ast(file, &ast, None)?;
                to_json(file, &v)
            })
            .map_err(|e| ScriptError::new(file, format!("cannot start its thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(ScriptError::new(file, "the script's thread failed")))
    })
}

/// Evaluates a shop script. Fields the script leaves out keep the built-in
/// shop's values.
pub(crate) fn shop_from_source(file: &str, source: &str) -> Result<GeneratorParams, ScriptError> {
    let v = eval(file, source)?;
    shop_from_json(file, v, Some(builtin()))
}

/// A shop from a script's result: its fields over `base` (`None`: the
/// result must name every field).
fn shop_from_json(
    file: &str,
    v: serde_json::Value,
    base: Option<&GeneratorParams>,
) -> Result<GeneratorParams, ScriptError> {
    let serde_json::Value::Object(fields) = v else {
        return Err(ScriptError::new(
            file,
            "a shop script must end with a map of parameters (#{ sessions_per_hour: …, … })",
        ));
    };
    for gone in ["customers", "activity_pareto_shape"] {
        if fields.contains_key(gone) {
            return Err(ScriptError::new(
                file,
                format!(
                    "`{gone}` is gone: customers now arrive with traffic, come back and leave \
                     (see `lifecycle` and the segments' `activity` and `dropout` in \
                     scripts/generator/default.rhai)"
                ),
            ));
        }
    }
    let mut merged = match base {
        Some(b) => serde_json::to_value(b)
            .map_err(|e| ScriptError::new(file, e.to_string()))?
            .as_object()
            .cloned()
            .unwrap_or_default(),
        None => serde_json::Map::new(),
    };
    for (k, v) in fields {
        // A map (`lifecycle`) is merged one level deep: fields left out keep
        // the base's values.
        match (merged.get_mut(&k), v) {
            (Some(serde_json::Value::Object(old)), serde_json::Value::Object(new)) => {
                old.extend(new);
            }
            (_, v) => {
                merged.insert(k, v);
            }
        }
    }
    let params: GeneratorParams = from_json(file, serde_json::Value::Object(merged))?;
    params
        .validate()
        .map_err(|e| ScriptError::new(file, e.to_string()))?;
    Ok(params)
}

/// Evaluates a behaviour script of either kind (a result with a `scenario`
/// name is a scenario).
pub fn from_source(file: &str, source: &str) -> Result<Behaviour, ScriptError> {
    let v = eval(file, source)?;
    if v.get("scenario").is_some() {
        let mut s: Scenario = from_json(file, v)?;
        s.file = file.to_owned();
        s.check().map_err(|e| ScriptError::new(file, e))?;
        Ok(Behaviour::Scenario(Box::new(s)))
    } else {
        shop_from_json(file, v, Some(builtin())).map(|p| Behaviour::Shop(Box::new(p)))
    }
}

/// Reads and evaluates a behaviour script file.
pub fn load(path: &Path) -> Result<Behaviour, ScriptError> {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let source = crate::script::read_source(path, crate::script::MAX_SOURCE_BYTES)
        .map_err(|e| ScriptError::new(&path.display().to_string(), e))?;
    from_source(&file, &source)
}

/// Loads a shop script file (an error if it is a scenario).
pub fn load_shop(path: &Path) -> Result<GeneratorParams, ScriptError> {
    match load(path)? {
        Behaviour::Shop(p) => Ok(*p),
        Behaviour::Scenario(s) => Err(ScriptError::new(
            &s.file,
            "this is a scenario script; give it with --scenario, not as the shop",
        )),
    }
}

/// Loads a scenario script file (an error if it is a shop).
pub fn load_scenario(path: &Path) -> Result<Scenario, ScriptError> {
    match load(path)? {
        Behaviour::Scenario(s) => Ok(*s),
        Behaviour::Shop(_) => Err(ScriptError::new(
            &path.display().to_string(),
            "this is a shop script (its result has no `scenario` name)",
        )),
    }
}

/// The shipped scenarios.
pub(crate) fn builtin_scenarios() -> Vec<Result<Scenario, ScriptError>> {
    BUILTIN_SCENARIOS
        .iter()
        .map(|(file, src)| match from_source(file, src)? {
            Behaviour::Scenario(s) => Ok(*s),
            Behaviour::Shop(_) => Err(ScriptError::new(file, "not a scenario")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_shop_loads_complete() {
        let v = eval("default.rhai", BUILTIN_SHOP).unwrap();
        let p = shop_from_json("default.rhai", v, None).unwrap();
        assert_eq!(p.categories.len(), 10);
        assert_eq!(p.lifecycle, crate::generator::LifecycleSpec::default());
        assert_eq!(p.segments.len(), 3);
        assert_ne!(&p, &GeneratorParams::fallback());
        assert_eq!(builtin(), &p);
    }

    #[test]
    fn a_partial_shop_keeps_the_rest() {
        let p = shop_from_source("mine.rhai", "#{ lifecycle: #{ dropout: 0.9 } }").unwrap();
        assert_eq!(p.lifecycle.dropout, 0.9);
        assert_eq!(
            p.lifecycle.purchases_per_year,
            builtin().lifecycle.purchases_per_year
        );
        assert_eq!(p.categories, builtin().categories);
        // The fixed population is gone, with a pointer to what replaced it.
        let e = shop_from_source("old.rhai", "#{ customers: 1234 }").unwrap_err();
        assert!(e.message.contains("lifecycle"), "{e}");
    }

    #[test]
    fn bad_shops_are_refused_with_the_field() {
        let e =
            shop_from_source("mine.rhai", "#{ lifecycle: #{ dropout: \"many\" } }").unwrap_err();
        assert!(e.message.contains("dropout"), "{e}");
        let e = shop_from_source("mine.rhai", "#{ lifecycle: #{ dropout: 1.5 } }").unwrap_err();
        assert!(e.message.contains("lifecycle.dropout"), "{e}");
        let e = shop_from_source("mine.rhai", "#{ custmers: 3 }").unwrap_err();
        assert!(e.message.contains("custmers"), "{e}");
        let e = shop_from_source("mine.rhai", "#{ hour_weights: [1.0] }").unwrap_err();
        assert!(e.message.contains("hour_weights"), "{e}");
        let e = shop_from_source("mine.rhai", "42").unwrap_err();
        assert!(e.message.contains("map of parameters"), "{e}");
        // Numbers that would size memory beyond reason are refused, not
        // allocated.
        let e = shop_from_source(
            "mine.rhai",
            "#{ lifecycle: #{ max_customers: 4000000000 } }",
        )
        .unwrap_err();
        assert!(e.message.contains("max_customers must be within"), "{e}");
        let e = shop_from_source("mine.rhai", "#{ sessions_per_hour: 1e300 }").unwrap_err();
        assert!(e.message.contains("sessions_per_hour"), "{e}");
    }

    #[test]
    fn deeply_nested_data_is_an_error_not_a_crash() {
        // Within the size limits, but nested deeper than data may be.
        let e = shop_from_source(
            "deep.rhai",
            "let a = []; for i in 0..5000 { a = [a]; } #{ categories: a }",
        )
        .unwrap_err();
        assert!(e.message.contains("nested deeper than 64"), "{e}");
        // Growing until a limit stops it: the deep value is dropped on the
        // script's own thread, and this process goes on.
        let e = shop_from_source("bomb.rhai", "let a = []; loop { a = [a]; }").unwrap_err();
        assert!(
            ["over the limit", "ran longer", "operations"]
                .iter()
                .any(|m| e.message.contains(m)),
            "{e}"
        );
        assert_eq!(
            shop_from_source("fine.rhai", "#{ sessions_per_hour: 7.0 }")
                .unwrap()
                .sessions_per_hour,
            7.0
        );
    }

    #[test]
    fn the_shipped_scenarios_load() {
        let all: Vec<Scenario> = builtin_scenarios()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(all.len(), 5);
        assert!(all.iter().any(|s| s.effects.churn > 1.0));
        assert!(all.iter().any(|s| s.effects.traffic >= 5.0));
        assert!(all.iter().any(|s| s.effects.payment_outage.is_some()));
        assert!(all.iter().any(|s| s.effects.launch.is_some()));
    }
}

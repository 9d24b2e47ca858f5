//! Token and spend budgets per key (issue 14, threats 9, 15, 16, 18): what a request may reserve
//! (`ledger`), what a key may do (`policy`), prices (`Pricing`), the UTC windows (`clock`) and
//! the counters on disk (`persist`).
//!
//! A request on a metered route (chat, completions, embeddings, responses, Anthropic messages)
//! is read for its model, whether it streams, and what it may cost: the prompt's estimate plus
//! the output it asks for (`max_tokens` and its aliases, or `proxy.usage.default_max_tokens`,
//! times `n`). That much is reserved at admission and settled to the answer's usage when it ends.
//!
//! Rollout tokens all count under the one pseudo-key `rollout:*` (no state per rollout, so a
//! training run's ids cannot grow the book); no per-key policy applies to them, and the spike rule
//! alerts on them but never suspends them.

pub mod clock;
pub mod ledger;
pub mod persist;
pub mod policy;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use http::StatusCode;
use serde_json::Value;

use crate::{
    config::proxy::{Price, PricingConfig, UnknownModel},
    proxy::{reject::Reject, shapes::Shape, upstream_surface::body, usage::estimate},
};
pub use ledger::{Ledger, Ticket};

/// The model label of every model the pricing table does not name (bounded metric labels).
pub const OTHER_MODEL: &str = "other";

/// `proxy.pricing`, compiled.
#[derive(Debug, Clone)]
pub struct Pricing {
    unknown: UnknownModel,
    default: Price,
    models: HashMap<Arc<str>, Price>,
    /// The `other` label, made once: a model the table does not name costs no allocation.
    other: Arc<str>,
}

impl Default for Pricing {
    fn default() -> Pricing {
        Pricing::new(&PricingConfig::default())
    }
}

impl Pricing {
    pub fn new(config: &PricingConfig) -> Pricing {
        Pricing {
            unknown: config.unknown,
            default: config.default_price,
            models: config
                .models
                .iter()
                .map(|(name, price)| (name.as_str().into(), *price))
                .collect(),
            other: OTHER_MODEL.into(),
        }
    }

    /// The label and price of `model`. A model the table does not name is `other` at the default
    /// price, or, with `unknown = "refuse"`, refused (403 `model_not_priced`) for a key with a
    /// spend budget, which could not be held to it.
    pub fn lookup(
        &self,
        model: Option<&str>,
        spend_budget: bool,
    ) -> Result<(Arc<str>, Price), Reject> {
        if let Some((name, price)) = model.and_then(|m| self.models.get_key_value(m.trim())) {
            return Ok((name.clone(), *price));
        }
        if self.unknown == UnknownModel::Refuse && spend_budget {
            return Err(Reject::new(
                StatusCode::FORBIDDEN,
                "model_not_priced",
                "this model has no price in proxy.pricing, and this key has a spend budget",
            ));
        }
        Ok((self.other.clone(), self.default))
    }
}

/// Whether requests of `shape` are metered.
pub fn metered(shape: Shape) -> bool {
    matches!(
        shape,
        Shape::ChatCompletions
            | Shape::Completions
            | Shape::Embeddings
            | Shape::Responses
            | Shape::AnthropicMessages
    )
}

/// What a metered request says about its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked<'a> {
    pub model: Option<&'a str>,
    /// The prompt's estimate, in tokens.
    pub input: u64,
    /// The most output it may produce, in tokens.
    pub output: u64,
    /// A streaming chat or completions request that did not ask for its usage chunk.
    pub add_usage: bool,
}

impl<'a> Asked<'a> {
    pub fn read(value: &'a Value, shape: Shape, default_max_tokens: u64) -> Asked<'a> {
        let number = |value: &Value| match value {
            Value::Number(n) => n.as_f64().map(|f| f.max(0.0) as u64),
            Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f.max(0.0) as u64),
            _ => None,
        };
        // One walk over the body's few members instead of a map lookup per field read.
        let mut max: [Option<u64>; body::TOKEN_FIELDS.len()] = [None; body::TOKEN_FIELDS.len()];
        let mut n: Option<u64> = None;
        let (mut streams, mut asked_usage, mut model) = (false, false, None);
        for (name, field) in value.as_object().into_iter().flatten() {
            let name = name.as_str();
            if let Some(at) = body::TOKEN_FIELDS.iter().position(|f| *f == name) {
                max[at] = number(field);
            } else if body::N_FIELDS.contains(&name) {
                n = n.max(number(field));
            } else {
                match name {
                    "stream" => streams = field.as_bool() == Some(true),
                    "stream_options" => {
                        asked_usage =
                            field.get("include_usage").and_then(Value::as_bool) == Some(true)
                    }
                    "model" => model = field.as_str(),
                    _ => {}
                }
            }
        }
        // The first of the fields, in their order, that holds a number.
        let max = max.into_iter().flatten().next();
        let n = n.unwrap_or(1).max(1);
        let output = if shape == Shape::Embeddings {
            0
        } else {
            max.unwrap_or(default_max_tokens).saturating_mul(n)
        };
        Asked {
            model,
            input: estimate::tokens(estimate::prompt_chars(value)),
            output,
            add_usage: streams
                && !asked_usage
                && matches!(shape, Shape::ChatCompletions | Shape::Completions),
        }
    }
}

/// The body with `stream_options.include_usage = true` added (other stream options kept).
pub fn with_include_usage(mut value: Value) -> Option<Vec<u8>> {
    let top = value.as_object_mut()?;
    let options = top
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    if !options.is_object() {
        *options = Value::Object(Default::default());
    }
    options
        .as_object_mut()?
        .insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&value).ok()
}

/// A metered request on its way: its reservation, its prompt estimate, and whether the usage-only
/// chunk is to be removed from its stream.
pub struct Metered {
    pub ticket: Ticket,
    pub input_estimate: u64,
    pub strip: bool,
    /// The same reservation in the fleet's shared counters (`[fleet]`), settled alongside.
    pub fleet: Option<crate::fleet::Reservation>,
}

/// Admission of a request with body `value` on a route of `shape` for `key` (issue 14): the
/// model checked against the key's list, priced, and the request's estimate reserved. Returns the
/// reservation for a metered shape, and the body to send instead when `include_usage` was added.
pub fn admit(
    ledger: &Arc<Ledger>,
    state: &crate::proxy::state::State,
    key: &crate::proxy::layers::auth::StoredKey,
    shape: Shape,
    value: Value,
) -> Result<(Option<Metered>, Option<Vec<u8>>), Reject> {
    if !matches!(shape, Shape::AgentEvents | Shape::None) {
        key.policy
            .check_model(value.get("model").and_then(Value::as_str))?;
    }
    if !metered(shape) || !state.metering {
        return Ok((None, None));
    }
    let asked = Asked::read(&value, shape, state.default_max_tokens);
    let price = state
        .pricing
        .lookup(asked.model, key.policy.has_spend_budget())?;
    let ticket = ledger.admit(
        &key.name,
        &key.policy,
        price,
        (asked.input, asked.output),
        clock::now(),
    )?;
    let (input, add_usage) = (asked.input, asked.add_usage);
    let body = if add_usage {
        with_include_usage(value)
    } else {
        None
    };
    let metered = Metered {
        ticket,
        input_estimate: input,
        strip: body.is_some(),
        fleet: None,
    };
    Ok((Some(metered), body))
}

/// The running daemon's ledger, for the control socket (`proxyguard usage`, `keys resume`).
static LEDGER: Mutex<Option<Arc<Ledger>>> = Mutex::new(None);

pub fn publish(ledger: Arc<Ledger>) {
    *LEDGER.lock().unwrap_or_else(|p| p.into_inner()) = Some(ledger);
}

pub fn published() -> Option<Arc<Ledger>> {
    LEDGER.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_a_request_asks() {
        let cases = [
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 100, "n": 2}),
                Shape::ChatCompletions,
                (Some("m"), 2, 200, false),
            ),
            (
                json!({"model": "m", "stream": true, "messages": []}),
                Shape::ChatCompletions,
                (Some("m"), 0, 4096, true),
            ),
            (
                json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "messages": []}),
                Shape::ChatCompletions,
                (Some("m"), 0, 4096, false),
            ),
            (
                json!({"model": "m", "stream": true, "max_tokens": 10, "messages": []}),
                Shape::AnthropicMessages,
                (Some("m"), 0, 10, false),
            ),
            (
                json!({"model": "e", "input": "abcd", "max_tokens": 10}),
                Shape::Embeddings,
                (Some("e"), 1, 0, false),
            ),
            (
                json!({"input": "x", "max_output_tokens": "7"}),
                Shape::Responses,
                (None, 1, 7, false),
            ),
        ];
        for (body, shape, (model, input, output, add)) in cases {
            let asked = Asked::read(&body, shape, 4096);
            assert_eq!(
                (asked.model, asked.input, asked.output, asked.add_usage),
                (model, input, output, add),
                "{body}"
            );
        }
    }

    #[test]
    fn include_usage_is_added_and_other_options_kept() {
        let out = with_include_usage(json!({"stream": true, "stream_options": {"x": 1}})).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value["stream_options"],
            json!({"x": 1, "include_usage": true})
        );
        let out = with_include_usage(json!({"stream": true, "stream_options": null})).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn pricing_by_model() {
        let mut config = PricingConfig::default();
        config.models.insert(
            "gpt".into(),
            Price {
                input: 1.0,
                output: 2.0,
            },
        );
        config.default_price = Price {
            input: 5.0,
            output: 5.0,
        };
        let pricing = Pricing::new(&config);
        assert_eq!(&*pricing.lookup(Some("gpt"), true).unwrap().0, "gpt");
        let (label, price) = pricing.lookup(Some("new-model"), true).unwrap();
        assert_eq!((&*label, price.input), ("other", 5.0));
        config.unknown = UnknownModel::Refuse;
        let pricing = Pricing::new(&config);
        assert_eq!(
            pricing.lookup(Some("new-model"), true).unwrap_err().reason,
            "model_not_priced"
        );
        assert!(pricing.lookup(Some("new-model"), false).is_ok());
    }
}

//! The per-run draws of the [guess] parts a scenario leaves open: the result call's "not
//! completed" answer (status, code, message, envelope) and the listing's page base. Drawn once
//! per simulator run from the scenario seed, so a run repeats, while the default stays a value
//! the client was not told about (DESIGN.md, "Testing").

use serde::Serialize;

use super::rng::{SplitMix64, mix};
use super::scenario::{ApiSpec, Choice, ErrorCode, ErrorEnvelope, ListingSpec};

/// Statuses a "not completed yet" answer plausibly has: a bad request, "no result yet", a
/// conflict with the running job.
pub const NOT_READY_STATUSES: [u16; 3] = [400, 404, 409];

/// Plausible undocumented codes. Never `10100`: that is the client's default pending code, and a
/// test in which both halves agree on it proves nothing.
pub const NOT_READY_CODES: [&str; 7] = [
    "10042",
    "10110",
    "20001",
    "40001",
    "40900",
    "SCENE_SUMMARY_NOT_COMPLETED",
    "NOT_COMPLETED",
];

/// Plausible messages, one in Korean (NCP answers in the console's language at times).
pub const NOT_READY_MESSAGES: [&str; 5] = [
    "Scene summary is not completed.",
    "The scene summary is not ready yet.",
    "Summarization is in progress.",
    "Result is not available until the scene summary is completed.",
    "장면 요약이 아직 완료되지 않았습니다.",
];

/// The result call's answer before completion, as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReady {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
    pub envelope: ErrorEnvelope,
}

/// Everything drawn for a run (or pinned by the scenario).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drawn {
    pub result_not_ready: NotReady,
    /// The envelope of every other service error.
    pub error_envelope: ErrorEnvelope,
    pub page_base: u64,
}

/// Resolves every open choice. Each draw is made whether or not the scenario pins it, so that
/// pinning one choice does not change what the others draw for the same seed.
pub fn draw(seed: u64, api: &ApiSpec, listing: &ListingSpec) -> Drawn {
    let mut rng = SplitMix64::new(mix(&[seed, 0x0AEA_D7C0_DE5E]));
    let status = *rng.pick(&NOT_READY_STATUSES).unwrap_or(&400);
    let code = *rng.pick(&NOT_READY_CODES).unwrap_or(&"10042");
    let as_number = rng.below(2) == 1;
    let message = *rng
        .pick(&NOT_READY_MESSAGES)
        .unwrap_or(&"Scene summary is not completed.");
    let envelope = *rng.pick(&ErrorEnvelope::ALL).unwrap_or(&ErrorEnvelope::Top);
    let page_base = rng.below(2);

    let drawn_code = match code.parse::<u64>() {
        Ok(n) if as_number => ErrorCode::Number(n),
        _ => ErrorCode::Text(code.to_owned()),
    };
    let (not_ready_envelope, error_envelope) = match &api.error_envelope {
        None => (envelope, ErrorEnvelope::Top),
        Some(Choice::Random) => (envelope, envelope),
        Some(Choice::Fixed(e)) => (*e, *e),
    };
    Drawn {
        result_not_ready: NotReady {
            status: api.result_not_ready_status.clone().or(status),
            code: api.result_not_ready_code.clone().or(drawn_code),
            message: api.result_not_ready_message.clone().or(message.to_owned()),
            envelope: not_ready_envelope,
        },
        error_envelope,
        page_base: listing.page_base.clone().or(page_base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draw_and_pins_hold() {
        let api = ApiSpec::default();
        let listing = ListingSpec::default();
        assert_eq!(draw(3, &api, &listing), draw(3, &api, &listing));
        let pinned = ApiSpec {
            result_not_ready_code: Choice::Fixed(ErrorCode::Text("10100".into())),
            error_envelope: Some(Choice::Fixed(ErrorEnvelope::ResponseError)),
            ..ApiSpec::default()
        };
        for seed in 0..20 {
            let free = draw(seed, &api, &listing);
            let d = draw(seed, &pinned, &listing);
            assert_eq!(d.result_not_ready.code, ErrorCode::Text("10100".into()));
            assert_eq!(d.result_not_ready.envelope, ErrorEnvelope::ResponseError);
            assert_eq!(d.error_envelope, ErrorEnvelope::ResponseError);
            // The unpinned choices are what they would have been without the pins.
            assert_eq!(d.result_not_ready.status, free.result_not_ready.status);
            assert_eq!(d.result_not_ready.message, free.result_not_ready.message);
            assert_eq!(d.page_base, free.page_base);
            // Left open, other service errors keep the documented shape.
            assert_eq!(free.error_envelope, ErrorEnvelope::Top);
        }
    }

    #[test]
    fn the_default_never_agrees_with_the_clients_default() {
        let (api, listing) = (ApiSpec::default(), ListingSpec::default());
        for seed in 0..500 {
            let d = draw(seed, &api, &listing).result_not_ready;
            assert_ne!(d.code, ErrorCode::Text("10100".into()), "seed {seed}");
            assert_ne!(d.code, ErrorCode::Number(10100), "seed {seed}");
            assert!(NOT_READY_STATUSES.contains(&d.status));
        }
    }
}

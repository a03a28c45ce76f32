//! From scores to reports: warm-up, threshold and repeat suppression, shared by the engine and
//! `agent detect` so the `alert` column is exactly what the agent would report.
//!
//! - No report before `warmup` seconds since the series' first point, nor before the detector
//!   is warm (its score reads 0 meanwhile).
//! - A report when the score reaches `threshold` outside a hold-off.
//! - After a report, `hold_off` seconds during which nothing is reported and the score is
//!   halved and kept below the threshold: a level change that holds, or a burst, is one report,
//!   and repeats rank below fresh anomalies when a threshold is swept over the scores.

/// The gate's settings (seconds and score).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateParams {
    pub threshold: f64,
    pub hold_off: f64,
    pub warmup: f64,
}

/// The shipped threshold: where a Gaussian detector sees a two-sided tail of 1e−5 and the
/// likelihood one of 1e−5 (the value NAB's optimiser lands on for the default detector).
pub const DEFAULT_THRESHOLD: f64 = 0.5;
/// The shipped hold-off: 6 hours.
pub const DEFAULT_HOLD_OFF: f64 = 6.0 * 3600.0;

impl Default for GateParams {
    fn default() -> Self {
        GateParams {
            threshold: DEFAULT_THRESHOLD,
            hold_off: DEFAULT_HOLD_OFF,
            warmup: 15.0,
        }
    }
}

/// One series' gate state (16 bytes).
#[derive(Clone, Copy, Debug)]
pub struct Gate {
    first: f64,
    hold_until: f64,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            first: f64::NAN,
            hold_until: f64::NEG_INFINITY,
        }
    }
}

/// What the gate made of a score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gated {
    /// The score as reported (0 in warm-up, halved and below the threshold in a hold-off).
    pub score: f64,
    /// Whether this point is reported as an anomaly.
    pub report: bool,
}

impl Gate {
    pub fn apply(&mut self, p: &GateParams, t: f64, warm: bool, score: f64) -> Gated {
        if self.first.is_nan() {
            self.first = t;
        }
        if !warm || t - self.first < p.warmup {
            return Gated {
                score: 0.0,
                report: false,
            };
        }
        if t < self.hold_until {
            let below = p.threshold * (1.0 - f64::EPSILON);
            return Gated {
                score: (0.5 * score).min(below),
                report: false,
            };
        }
        let report = score >= p.threshold;
        if report {
            self.hold_until = t + p.hold_off;
        }
        Gated { score, report }
    }
}

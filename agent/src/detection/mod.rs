//! Local anomaly detection: streaming detectors that score each new value of a series against
//! its own past, and the engine that runs one per watched series and reports anomalies.
//!
//! Every detector is strictly causal (a point is scored against earlier points only, then
//! learnt), O(1) per point, holds no heap memory (its state is `size_of` itself, see
//! [`Detector::state_bytes`]) and takes its parameters in seconds (half-lives, windows,
//! periods), so a series sampled every 5 minutes (NAB) and one sampled every second (the agent)
//! run the same code; irregular and repeated timestamps are handled ([`math::Clock`]).
//!
//! Scores are in [0, 1] on one scale: 0.5 is where a Gaussian detector sees a two-sided tail of
//! 1e−5 (|z| ≈ 4.42), 1 is 1e−10 or beyond. [`gate::Gate`] turns scores into reports (warm-up,
//! threshold, hold-off after a report) the same way for `agent detect` and the engine.
//!
//! In `agent run`, [`task`] feeds the engine the derived signals (`crate::signals`) and puts
//! out anomalies ([`report`]: log records, the score gauge, `/status` entries in [`status`]).

pub mod bench;
pub mod config;
pub mod cusum;
pub mod engine;
pub mod ensemble;
pub mod ewma;
pub mod extreme;
pub mod gate;
pub mod likelihood;
mod lru;
pub mod math;
pub mod offline;
pub mod report;
pub mod robust;
pub mod seasonal;
pub mod status;
pub mod synthetic;
pub mod task;
pub mod window;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod tests;

use std::fmt;

/// A streaming anomaly detector for one series.
pub trait Detector: Send {
    /// Scores `x`, observed at `t` (seconds on any fixed epoch, e.g. Unix time; may repeat or
    /// step back, see [`math::Clock`]), against the points before it, then learns it.
    /// Returns a score in [0, 1]. `x` must be finite (the engine and `agent detect` skip others).
    fn update(&mut self, t: f64, x: f64) -> f64;

    /// The range `(min, max)` the last scored point was expected in: values inside it would
    /// have scored below 0.5 on the point model (NaN before the model has any spread).
    fn expected(&self) -> (f64, f64);

    /// Whether the detector has seen enough points for its score to mean anything (at least
    /// [`MIN_POINTS`]); the engine adds its configured warm-up time on top.
    fn warm(&self) -> bool;

    /// Bytes of state for one series (the detectors own no heap memory, so this is their size).
    fn state_bytes(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// Points a detector needs before its spread estimates are usable.
pub const MIN_POINTS: u32 = 10;

/// The detectors, by the name used in config and on the command line.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Daily-seasonal forecast residual through anomaly likelihood, plus new running extremes.
    #[default]
    Ensemble,
    /// Exponentially weighted mean and variance: Gaussian tail of the point.
    Ewma,
    /// Rolling z-score over a time window (NAB's "windowed Gaussian").
    Window,
    /// Robust z-score: Huber-clipped exponentially weighted median and mean absolute deviation.
    Robust,
    /// Two-sided CUSUM of standardised deviations: level shifts.
    Cusum,
    /// Anomaly likelihood of an exponentially weighted Gaussian residual.
    Likelihood,
    /// New running maximum or minimum beyond a fraction of the range seen so far.
    Extreme,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Ensemble,
        Kind::Ewma,
        Kind::Window,
        Kind::Robust,
        Kind::Cusum,
        Kind::Likelihood,
        Kind::Extreme,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ensemble => "ensemble",
            Kind::Ewma => "ewma",
            Kind::Window => "window",
            Kind::Robust => "robust",
            Kind::Cusum => "cusum",
            Kind::Likelihood => "likelihood",
            Kind::Extreme => "extreme",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// One line saying what it does.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Ensemble => "daily-seasonal residual through anomaly likelihood, plus new running extremes (default)",
            Kind::Ewma => "exponentially weighted mean/variance (half-life 1 h): Gaussian tail of the point",
            Kind::Window => "rolling z-score over the last hour (windowed Gaussian)",
            Kind::Robust => "Huber-clipped EWMA median and absolute deviation (half-life 1 h): robust z-score",
            Kind::Cusum => "two-sided CUSUM of deviations from a slow baseline: level shifts",
            Kind::Likelihood => "anomaly likelihood of an EWMA Gaussian residual",
            Kind::Extreme => "new running max/min beyond 5 % of the range seen so far",
        }
    }

    /// A fresh detector with the shipped parameters.
    pub fn build(self) -> Box<dyn Detector> {
        match self {
            Kind::Ensemble => Box::new(ensemble::Ensemble::default()),
            Kind::Ewma => Box::new(ewma::EwmaGaussian::default()),
            Kind::Window => Box::new(window::RollingZ::default()),
            Kind::Robust => Box::new(robust::RobustZ::default()),
            Kind::Cusum => Box::new(cusum::Cusum::default()),
            Kind::Likelihood => Box::new(likelihood::LikelihoodDetector::default()),
            Kind::Extreme => Box::new(extreme::ExtremeDetector::default()),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

//! A level-plus-daily-profile forecast (additive Holt–Winters without trend): the expected
//! value is a slow level plus the learnt offset of this time of day, interpolated between
//! bins; the residual's spread is tracked too. Series without a daily pattern learn offsets
//! near zero and it reduces to an exponentially weighted mean.

use super::math::{decay, z_of, Ewm};

/// Bins per period (one hour each for a daily period).
pub const BINS: usize = 24;

/// Time constants, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeasonalParams {
    /// Length of the cycle (a day: `t mod period` picks the bin; `t` is UTC-based).
    pub period: f64,
    /// Half-life of the level.
    pub level_half_life: f64,
    /// Half-life of each bin's offset, counted in periods actually seen (a bin is visited
    /// `1/BINS` of the time).
    pub season_half_life: f64,
    /// Half-life of the residual's mean and variance.
    pub error_half_life: f64,
}

impl Default for SeasonalParams {
    fn default() -> Self {
        SeasonalParams {
            period: 86_400.0,
            level_half_life: 6.0 * 3600.0,
            season_half_life: 3.0 * 86_400.0,
            error_half_life: 86_400.0,
        }
    }
}

/// Forecast state: 24 offsets, a level and the residual's moments (≈ 270 bytes).
#[derive(Clone, Debug)]
pub struct Seasonal {
    level: Ewm,
    offsets: [f64; BINS],
    /// Bit b: bin b has been visited.
    seen: u32,
    error: Ewm,
}

/// A forecast for time `t`, kept for the learning step.
#[derive(Clone, Copy, Debug)]
pub struct Forecast {
    pub value: f64,
    pub sd: f64,
    b0: usize,
    b1: usize,
    frac: f64,
}

impl Default for Seasonal {
    fn default() -> Self {
        Seasonal {
            level: Ewm::default(),
            offsets: [0.0; BINS],
            seen: 0,
            error: Ewm::default(),
        }
    }
}

impl Seasonal {
    /// The expected value at `t` and the residual's standard deviation so far.
    pub fn forecast(&self, p: &SeasonalParams, t: f64) -> Forecast {
        // Bin centres sit at (b + 0.5) bins; interpolate between the two around t.
        let phase = t.rem_euclid(p.period) / p.period * BINS as f64 - 0.5;
        let floor = phase.floor();
        let b0 = (floor as i64).rem_euclid(BINS as i64) as usize;
        let b1 = (b0 + 1) % BINS;
        let frac = phase - floor;
        let seen = |b: usize| self.seen & (1 << b) != 0;
        let s0 = match (seen(b0), seen(b1)) {
            (true, _) => self.offsets[b0],
            (false, true) => self.offsets[b1],
            (false, false) => 0.0,
        };
        let s1 = if seen(b1) { self.offsets[b1] } else { s0 };
        Forecast {
            value: self.level.mean + s0 * (1.0 - frac) + s1 * frac,
            sd: self.error.sd(),
            b0,
            b1,
            frac,
        }
    }

    /// z-score of `x` against forecast `f`.
    pub fn z(&self, f: &Forecast, x: f64) -> f64 {
        z_of(x - f.value, f.sd, f.value)
    }

    /// Learns `x`, seen `dt` seconds after the previous point, against its forecast `f`.
    pub fn learn(&mut self, p: &SeasonalParams, f: &Forecast, dt: f64, x: f64) {
        // The first point has no forecast to miss: it only sets the level.
        if self.level.n > 0 {
            self.error.push(decay(dt, p.error_half_life), x - f.value);
        }
        let offset = f.value - self.level.mean;
        self.level.push(decay(dt, p.level_half_life), x - offset);
        let r = x - self.level.mean;
        let a = decay(dt * BINS as f64, p.season_half_life);
        for (b, w) in [(f.b0, 1.0 - f.frac), (f.b1, f.frac)] {
            if w <= 0.0 {
                continue;
            }
            if self.seen & (1 << b) == 0 {
                self.seen |= 1 << b;
                self.offsets[b] = r;
            } else {
                self.offsets[b] += a * w * (r - self.offsets[b]);
            }
        }
    }

    /// Residuals learnt (points after the first).
    pub fn n(&self) -> u32 {
        self.error.n
    }
}

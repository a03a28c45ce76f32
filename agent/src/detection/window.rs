//! `window`: rolling z-score over the last `window` seconds (NAB's "windowed Gaussian"), kept
//! in 16 time buckets of count, sum and sum of squares, so a time window costs O(1) per point
//! and fixed memory however many points fall in it. The window is the current bucket plus the
//! 15 before it, i.e. between 15/16 and all of `window`.

use super::{
    ewma::score_of_z,
    math::{z_of, Z_HALF},
    Detector,
};

const BUCKETS: usize = 16;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    n: u32,
    sum: f64,
    sumsq: f64,
}

#[derive(Clone, Debug)]
pub struct RollingZ {
    /// Window length (s).
    pub window: f64,
    buckets: [Bucket; BUCKETS],
    /// Index (time / bucket width) of the newest bucket.
    head: i64,
    /// Sums are taken relative to this value (the window's mean at the last bucket change),
    /// against cancellation.
    pivot: Option<f64>,
    total: Bucket,
    expected: (f64, f64),
}

impl Default for RollingZ {
    fn default() -> Self {
        RollingZ::new(3600.0)
    }
}

impl RollingZ {
    pub fn new(window: f64) -> Self {
        RollingZ {
            window,
            buckets: [Bucket::default(); BUCKETS],
            head: i64::MIN,
            pivot: None,
            total: Bucket::default(),
            expected: (f64::NAN, f64::NAN),
        }
    }

    /// Moves the head to bucket `idx`, emptying the buckets that left the window, then
    /// re-centres the sums on the window's mean and recomputes the total (no drift from
    /// repeated subtraction; 16 buckets, so still O(1)).
    fn advance(&mut self, idx: i64) {
        if self.head == i64::MIN || idx - self.head >= BUCKETS as i64 {
            self.buckets = [Bucket::default(); BUCKETS];
        } else {
            for i in self.head + 1..=idx {
                self.buckets[i.rem_euclid(BUCKETS as i64) as usize] = Bucket::default();
            }
        }
        self.head = idx;
        let n: u32 = self.buckets.iter().map(|b| b.n).sum();
        if n == 0 {
            self.pivot = None;
            self.total = Bucket::default();
            return;
        }
        let shift = self.buckets.iter().map(|b| b.sum).sum::<f64>() / n as f64;
        let mut total = Bucket::default();
        for b in &mut self.buckets {
            let k = b.n as f64;
            b.sumsq += k * shift * shift - 2.0 * shift * b.sum;
            b.sum -= k * shift;
            total.n += b.n;
            total.sum += b.sum;
            total.sumsq += b.sumsq;
        }
        if let Some(p) = &mut self.pivot {
            *p += shift;
        }
        self.total = total;
    }
}

impl Detector for RollingZ {
    fn update(&mut self, t: f64, x: f64) -> f64 {
        let idx = (t / (self.window / BUCKETS as f64)).floor() as i64;
        // A step back in time stays in the newest bucket.
        if idx > self.head {
            self.advance(idx);
        }
        let pivot = *self.pivot.get_or_insert(x);
        let n = self.total.n as f64;
        let score = if self.total.n == 0 {
            self.expected = (f64::NAN, f64::NAN);
            0.0
        } else {
            let mean = self.total.sum / n;
            let var = (self.total.sumsq / n - mean * mean).max(0.0);
            let sd = var.sqrt();
            let band = Z_HALF * sd;
            self.expected = (pivot + mean - band, pivot + mean + band);
            score_of_z(z_of(x - pivot - mean, sd, pivot + mean))
        };
        let d = x - pivot;
        let b = &mut self.buckets[self.head.rem_euclid(BUCKETS as i64) as usize];
        b.n += 1;
        b.sum += d;
        b.sumsq += d * d;
        self.total.n += 1;
        self.total.sum += d;
        self.total.sumsq += d * d;
        score
    }
    fn expected(&self) -> (f64, f64) {
        self.expected
    }
    fn warm(&self) -> bool {
        self.total.n >= super::MIN_POINTS
    }
}

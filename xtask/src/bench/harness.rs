//! The common harness of the side-by-side benches: the order conditions run in (rotated each
//! round, so none always runs first, in the warmest or coldest machine), figures with their
//! spread over rounds, ratios computed per round (each condition against the baseline of the
//! same round), and the judgement of an effect against that spread ("within noise").

/// The order of `n` conditions in round `round` (0-based): condition `(k + round) % n` runs
/// k-th, so each one leads once every `n` rounds.
pub fn rotation(round: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + round) % n)
}

/// A figure over rounds: median and spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// First and third quartiles (linear interpolation between order statistics).
    pub q1: f64,
    pub q3: f64,
    pub n: usize,
}

/// The `p`-quantile of sorted values, interpolated linearly.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl Spread {
    /// The spread of `values` (NaN everywhere for none).
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                q1: f64::NAN,
                q3: f64::NAN,
                n: 0,
            };
        }
        v.sort_by(f64::total_cmp);
        Spread {
            median: quantile(&v, 0.5),
            min: v[0],
            max: v[v.len() - 1],
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
            n: v.len(),
        }
    }

    /// Every value mapped by `f` (monotonic increasing `f`; e.g. a unit change).
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Spread {
        Spread {
            median: f(self.median),
            min: f(self.min),
            max: f(self.max),
            q1: f(self.q1),
            q3: f(self.q3),
            n: self.n,
        }
    }

    /// `median [min–max]` with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        format!(
            "{:.prec$} [{:.prec$}–{:.prec$}]",
            self.median, self.min, self.max
        )
    }

    /// Whether `x` lies within the middle half of the rounds (between the quartiles).
    pub fn straddles(&self, x: f64) -> bool {
        self.q1 <= x && x <= self.q3
    }
}

/// Per-round ratios `a[i] / b[i]`: each condition against the baseline of its own round, so a
/// drift of the machine between rounds cancels out.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// Per-round differences `a[i] - b[i]`.
pub fn differences(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// How an effect (a per-round spread of, say, slowdown percentages, where 0 is "no effect")
/// reads: "within noise" when the rounds' middle half includes no effect at all, or when the
/// effect (its median) is no larger than that middle half's width.
pub fn noise_note(effect: &Spread) -> &'static str {
    if effect.straddles(0.0) || effect.median.abs() <= effect.q3 - effect.q1 {
        "within noise"
    } else {
        "above noise"
    }
}

/// A cost goal ("at most `goal`") judged on the rounds' spread, not on one median: met when
/// even the third quartile is within it, not met when even the first quartile is beyond it,
/// undecided (the spread straddles the goal) otherwise.
pub fn verdict(cost: &Spread, goal: f64) -> &'static str {
    if cost.q3 <= goal {
        "met"
    } else if cost.q1 > goal {
        "NOT met"
    } else {
        "undecided (the rounds straddle the goal)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_leads_in_turn() {
        let firsts: Vec<usize> = (0..6).map(|r| rotation(r, 3).next().unwrap()).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        for r in 0..4 {
            let mut order: Vec<usize> = rotation(r, 4).collect();
            order.sort();
            assert_eq!(order, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn spread_and_quartiles() {
        let s = Spread::of(&[5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!(
            (s.median, s.min, s.max, s.q1, s.q3),
            (3.0, 1.0, 5.0, 2.0, 4.0)
        );
        let s = Spread::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((s.median, s.q1, s.q3), (2.5, 1.75, 3.25));
        assert_eq!(Spread::of(&[7.0]).show(1), "7.0 [7.0–7.0]");
        assert!(Spread::of(&[]).median.is_nan());
        assert_eq!(ratios(&[2.0, 3.0], &[1.0, 2.0]), [2.0, 1.5]);
    }

    #[test]
    fn small_effects_are_noise_and_goals_judged_on_the_spread() {
        // The profiler bench once printed a -4% slowdown as "met": rounds from -9% to +2%.
        let slowdown = Spread::of(&[-9.0, -4.0, -4.5, 1.0, 2.0]);
        assert_eq!(noise_note(&slowdown), "within noise");
        assert_eq!(
            verdict(&slowdown, 0.5),
            "undecided (the rounds straddle the goal)"
        );
        // Three rounds, one far off: -8% "speedup" smaller than the rounds' spread.
        assert_eq!(
            noise_note(&Spread::of(&[-36.2, -8.04, 6.32])),
            "within noise"
        );
        let clear = Spread::of(&[3.0, 3.5, 4.0, 4.2, 9.0]);
        assert_eq!(noise_note(&clear), "above noise");
        assert_eq!(verdict(&clear, 2.0), "NOT met");
        assert_eq!(verdict(&clear, 5.0), "met");
    }
}

//! The world's risk model in one place: every number that decides how risky a synthetic user
//! is, each with the sentence from the product's story that sets it. None was chosen from a
//! model's score, and none may be changed to move a bar: a bar a model misses on this world
//! is a finding about the model (or about what the data can show), not about the world.
//!
//! A user's log-odds of going 30+ days past due within 90 days is
//!
//! ```text
//! BASE_LOG_ODDS + occupation + region + income + age            (a few strong facts)
//!   + sum over favourite merchants of (category + own effect)   (thousands of weak fragments)
//!   + certificates                                              (verified ones lower it)
//!   - STABILITY_EFFECT * stability                              (seen faintly, through rent)
//!   + HIDDEN_EFFECT * hidden                                    (seen by no row at all)
//! ```
//!
//! The occupation and category tables live in `catalog.rs`; their effects are the strong and
//! the category-level facts of the story, set by hand from what each job or shop says about
//! a borrower.

/// The intercept. It sets the population's mean 90-day default rate near 8%, a consumer
/// credit book's, and nothing else: it moves every user alike.
pub const BASE_LOG_ODDS: f64 = -3.6;

/// Log-odds per income band above the middle (bands 1-8): the top band's borrowers carry about
/// a quarter of the bottom band's odds, as income is one of the few strong facts.
pub const INCOME_EFFECT: f64 = 0.2;

/// Log-odds per year below 35: younger borrowers default more, a 25-year-old at ~1.16 times a
/// 35-year-old's odds.
pub const AGE_EFFECT: f64 = 0.015;

/// A region's log-odds per city tier (1 = largest cities) and its own spread: tier 4 cities
/// carry about 1.4 times tier 1's odds, and cities of a tier differ by their local economy.
pub const REGION_TIER_EFFECT: f64 = 0.12;
pub const REGION_OWN_SD: f64 = 0.15;

/// The category table's effects are written for a user with ~20 favourite merchants; users
/// have ~8 (`FAVOURITES_*`), so each counts for more.
pub const CATEGORY_EFFECT_SCALE: f64 = 1.5;

/// How many merchants a user frequents: 3 plus a Poisson count of this mean (~8 in all).
pub const FAVOURITES_MIN: u32 = 3;
pub const FAVOURITES_EXTRA_MEAN: f64 = 5.0;

/// Spread of a merchant's own effect around its category's: the story's weak fragment, "each
/// moves risk by 1-2%". At the book's ~8% default rate one percentage point of PD is ~0.14
/// log-odds; with sd 0.3 the median merchant moves a user's PD by ~1.5 points (|N(0, 0.3)|'s
/// median is 0.2 log-odds). Most merchants have a few dozen customers, too few defaults to
/// learn that from: what no model can learn lowers every model's AUC against the oracle's,
/// and that gap is the world's truth, not a flaw to tune away.
pub const MERCHANT_OWN_EFFECT_SD: f64 = 0.3;

/// Log-odds a standard deviation of "stability" (a steady life) lowers risk by: a steadier
/// borrower by one sd has ~3/4 of the odds. It shows only through a few rent and utility
/// payments, so models see it faintly.
pub const STABILITY_EFFECT: f64 = 0.3;

/// Log-odds a standard deviation of what no row shows moves risk by: illness, a separation,
/// a job about to be lost, help from family. As large as the spread between the safest and
/// the riskiest ordinary occupations, because the next 90 days hold news no bank has yet.
pub const HIDDEN_EFFECT: f64 = 0.5;

/// A verified genuine certificate lowers log-odds by this much per tier (1-5); a fake one
/// raises them (someone who forges a certificate is a riskier borrower); all certificates
/// together lower them by at most `CERTIFICATE_FLOOR`, as a third diploma says little more.
pub const VERIFIED_CERTIFICATE_EFFECT_PER_TIER: f64 = 0.1;
pub const FAKE_CERTIFICATE_EFFECT: f64 = 0.35;
pub const CERTIFICATE_FLOOR: f64 = -1.2;

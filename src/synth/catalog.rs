//! The fixed parts of a synthetic world: occupations, regions, merchant categories, merchants
//! and the certificate-type catalog, each with its latent effect on default risk (log-odds).
//! Everything is drawn from the world's seed, so two worlds with one seed are identical.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::random::{normal, stream_seed};
use super::story::{
    CATEGORY_EFFECT_SCALE, MERCHANT_OWN_EFFECT_SD, REGION_OWN_SD, REGION_TIER_EFFECT,
};

pub struct Occupation {
    pub name: &'static str,
    pub effect: f64,
    /// typical income band (1..=8)
    pub income_band: f64,
    /// certificate family this occupation tends to hold
    pub certificate_family: usize,
}

pub struct Region {
    pub name: String,
    pub tier: i32,
    pub effect: f64,
    pub weight: f64,
}

pub struct Category {
    pub name: &'static str,
    pub effect: f64,
    /// median purchase amount
    pub typical_amount: f64,
}

pub struct Merchant {
    pub category: usize,
    pub effect: f64,
}

pub struct CertificateType {
    pub id: u32,
    pub name: String,
    pub family: usize,
    pub tier: i32,
}

pub const CERTIFICATE_FAMILIES: [&str; 6] = [
    "professional",
    "vocational",
    "language",
    "academic",
    "award",
    "employment",
];

const OCCUPATIONS: [(&str, f64, f64, usize); 30] = [
    ("teacher", -0.45, 5.0, 0),
    ("nurse", -0.35, 4.5, 0),
    ("doctor", -0.6, 7.0, 0),
    ("engineer", -0.4, 6.0, 0),
    ("accountant", -0.35, 5.5, 0),
    ("lawyer", -0.4, 7.0, 0),
    ("civil_servant", -0.55, 5.0, 5),
    ("police_officer", -0.3, 4.5, 5),
    ("software_developer", -0.3, 6.5, 0),
    ("electrician", -0.1, 4.0, 1),
    ("plumber", -0.05, 4.0, 1),
    ("chef", 0.1, 3.5, 1),
    ("driver", 0.25, 3.0, 1),
    ("courier", 0.4, 2.5, 1),
    ("construction_worker", 0.35, 3.0, 1),
    ("factory_worker", 0.2, 3.0, 5),
    ("retail_clerk", 0.25, 2.5, 5),
    ("waiter", 0.35, 2.0, 2),
    ("student", 0.3, 1.5, 3),
    ("graduate_student", 0.05, 2.0, 3),
    ("farmer", 0.15, 2.5, 1),
    ("small_business_owner", 0.2, 5.0, 4),
    ("freelancer", 0.3, 4.0, 2),
    ("artist", 0.25, 3.0, 4),
    ("salesperson", 0.15, 4.0, 5),
    ("researcher", -0.3, 5.5, 3),
    ("pharmacist", -0.4, 6.0, 0),
    ("pilot", -0.5, 7.5, 0),
    ("security_guard", 0.3, 2.5, 5),
    ("unemployed", 0.9, 1.0, 2),
];

const CATEGORIES: [(&str, f64, f64); 40] = [
    ("grocery", -0.05, 45.0),
    ("restaurants", 0.0, 30.0),
    ("coffee", 0.0, 6.0),
    ("fast_food", 0.08, 12.0),
    ("electronics", 0.05, 250.0),
    ("furniture", -0.05, 400.0),
    ("education", -0.2, 300.0),
    ("books", -0.15, 25.0),
    ("travel", -0.05, 500.0),
    ("hotels", 0.0, 180.0),
    ("airlines", -0.05, 350.0),
    ("fuel", 0.0, 50.0),
    ("public_transport", -0.02, 5.0),
    ("ride_hailing", 0.03, 15.0),
    ("pharmacy", 0.0, 20.0),
    ("healthcare", -0.03, 120.0),
    ("fitness", -0.1, 40.0),
    ("sporting_goods", -0.05, 80.0),
    ("apparel", 0.02, 60.0),
    ("luxury", 0.15, 900.0),
    ("jewelry", 0.12, 600.0),
    ("cosmetics", 0.03, 35.0),
    ("home_improvement", -0.08, 150.0),
    ("gardening", -0.08, 40.0),
    ("pets", -0.03, 45.0),
    ("childcare", -0.05, 200.0),
    ("toys", 0.0, 35.0),
    ("gaming", 0.15, 40.0),
    ("gambling", 0.45, 100.0),
    ("lottery", 0.3, 10.0),
    ("nightlife", 0.2, 60.0),
    ("alcohol", 0.15, 30.0),
    ("tobacco", 0.15, 12.0),
    ("pawn_shop", 0.5, 150.0),
    ("payday_advance", 0.6, 200.0),
    ("insurance", -0.15, 120.0),
    ("charity", -0.15, 30.0),
    ("streaming", 0.0, 12.0),
    ("telecom", -0.02, 40.0),
    ("automotive", 0.02, 220.0),
];

const CERTIFICATE_SUBJECTS: [&str; 24] = [
    "teaching",
    "nursing",
    "accounting",
    "engineering",
    "it_security",
    "cloud",
    "project_management",
    "welding",
    "electrical",
    "plumbing",
    "culinary",
    "driving",
    "english",
    "german",
    "french",
    "japanese",
    "spanish",
    "mandarin",
    "mathematics",
    "economics",
    "law",
    "medicine",
    "design",
    "logistics",
];

pub struct Catalog {
    pub occupations: Vec<Occupation>,
    pub regions: Vec<Region>,
    pub categories: Vec<Category>,
    pub merchants: Vec<Merchant>,
    /// cumulative popularity of merchants, for sampling favourites
    pub merchant_cdf: Vec<f64>,
    pub certificate_types: Vec<CertificateType>,
    /// certificate type indices by family
    pub types_by_family: Vec<Vec<usize>>,
}

/// Merchants scale with the population so bigger worlds have more weak signals.
pub fn merchant_count(users: u64) -> usize {
    (users / 2).clamp(2_000, 120_000) as usize
}

impl Catalog {
    pub fn new(seed: u64, users: u64) -> Catalog {
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, 0, 0xCA7A));
        let occupations = OCCUPATIONS
            .iter()
            .map(
                |&(name, effect, income_band, certificate_family)| Occupation {
                    name,
                    effect,
                    income_band,
                    certificate_family,
                },
            )
            .collect();
        let regions = (0..40)
            .map(|i| {
                let tier = 1 + i / 10;
                Region {
                    name: format!("city_{i:02}"),
                    tier,
                    effect: REGION_TIER_EFFECT * (tier as f64 - 2.5)
                        + REGION_OWN_SD * normal(&mut rng),
                    weight: 1.0 / (1.0 + i as f64).powf(0.7),
                }
            })
            .collect();
        let categories: Vec<Category> = CATEGORIES
            .iter()
            .map(|&(name, effect, typical_amount)| Category {
                name,
                effect: CATEGORY_EFFECT_SCALE * effect,
                typical_amount,
            })
            .collect();
        let n = merchant_count(users);
        let merchants: Vec<Merchant> = (0..n)
            .map(|_| {
                let category = rng.random_range(0..categories.len());
                Merchant {
                    category,
                    // each merchant nudges risk a little past its category: one weak fragment
                    // among thousands
                    effect: categories[category].effect + MERCHANT_OWN_EFFECT_SD * normal(&mut rng),
                }
            })
            .collect();
        let mut merchant_cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / (rank as f64 + 20.0).powf(0.85);
            merchant_cdf.push(total);
        }
        let mut certificate_types = Vec::new();
        let mut types_by_family = vec![Vec::new(); CERTIFICATE_FAMILIES.len()];
        let per_family = [300usize, 260, 180, 220, 120, 120];
        for (family, &count) in per_family.iter().enumerate() {
            for k in 0..count {
                let subject = CERTIFICATE_SUBJECTS[rng.random_range(0..CERTIFICATE_SUBJECTS.len())];
                let tier = 1 + (k % 5) as i32;
                let id = 1000 + certificate_types.len() as u32;
                types_by_family[family].push(certificate_types.len());
                certificate_types.push(CertificateType {
                    id,
                    name: format!(
                        "{}_{}_level{}_{}",
                        CERTIFICATE_FAMILIES[family], subject, tier, k
                    ),
                    family,
                    tier,
                });
            }
        }
        Catalog {
            occupations,
            regions,
            categories,
            merchants,
            merchant_cdf,
            certificate_types,
            types_by_family,
        }
    }

    pub fn region_weights(&self) -> Vec<f64> {
        self.regions.iter().map(|r| r.weight).collect()
    }
}

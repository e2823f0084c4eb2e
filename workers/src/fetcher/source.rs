//! Where the fetcher's objects come from. The generated source makes app9's people
//! `{uuid, fn, ln, friends}` on demand from the seed and the chunk index, so any chunk can
//! be made again for a re-send without keeping the data set in memory.

use serde::Serialize;

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Dennis",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "Ivan",
    "Joan",
    "Ken",
    "Linus",
    "Margaret",
    "Niklaus",
    "Radia",
    "Sophie",
    "Tim",
    "Whitfield",
    "Yukihiro",
];
const LAST: &[&str] = &[
    "Allen",
    "Backus",
    "Cerf",
    "Dijkstra",
    "Engelbart",
    "Floyd",
    "Goldberg",
    "Hopper",
    "Iverson",
    "Kay",
    "Lamport",
    "Liskov",
    "McCarthy",
    "Perlman",
    "Ritchie",
    "Stroustrup",
    "Thompson",
    "Torvalds",
    "Wilson",
    "Wirth",
];

#[derive(Clone, Debug)]
pub struct Generated {
    pub seed: u64,
    pub objects: u64,
    pub chunk_size: u64,
}

#[derive(Serialize)]
struct Person {
    uuid: String,
    #[serde(rename = "fn")]
    first: &'static str,
    #[serde(rename = "ln")]
    last: &'static str,
    friends: Vec<String>,
}

impl Generated {
    pub fn chunks(&self) -> u64 {
        self.objects.div_ceil(self.chunk_size)
    }

    /// The `mapper_data` payload of chunk `index`: `{"index": N, "data": [person, ...]}`.
    pub fn chunk(&self, index: u64) -> Vec<u8> {
        let start = index * self.chunk_size;
        let end = (start + self.chunk_size).min(self.objects);
        let mut people: Vec<Person> = (start..end).map(|i| self.person(i)).collect();
        // As app9's mock API: friendships inside the chunk, both ways, 3 in 50 pairs for its
        // chunks of 100; bigger chunks keep the same ~12 friends a person.
        let mut rng = fastrand::Rng::with_seed(mix(self.seed, index) ^ 2);
        let n = people.len();
        let mut friends = vec![Vec::new(); n];
        for p in 0..n {
            for f in 0..n {
                if rng.u64(..n.max(100) as u64 * 50) < 300 && p != f {
                    friends[p].push(f);
                    friends[f].push(p);
                }
            }
        }
        for (p, mut fs) in friends.into_iter().enumerate() {
            fs.sort_unstable();
            fs.dedup();
            people[p].friends = fs.iter().map(|&f| people[f].uuid.clone()).collect();
        }
        serde_json::to_vec(&crate::protocol::Chunk {
            index,
            data: people,
        })
        .expect("people serialize")
    }

    fn person(&self, i: u64) -> Person {
        let mut rng = fastrand::Rng::with_seed(mix(self.seed, i) ^ 1);
        Person {
            uuid: self.uuid(i),
            first: FIRST[rng.usize(..FIRST.len())],
            last: LAST[rng.usize(..LAST.len())],
            friends: Vec::new(),
        }
    }

    fn uuid(&self, i: u64) -> String {
        let bytes = fastrand::Rng::with_seed(mix(self.seed, i))
            .u128(..)
            .to_le_bytes();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

/// splitmix64 of the pair, so neighbouring indexes get unrelated streams.
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn source() -> Generated {
        Generated {
            seed: 1,
            objects: 250,
            chunk_size: 100,
        }
    }

    #[test]
    fn chunks_are_deterministic_and_shaped_like_app9() {
        let s = source();
        assert_eq!(s.chunk(1), s.chunk(1));
        assert_ne!(
            s.chunk(1),
            Generated {
                seed: 2,
                ..s.clone()
            }
            .chunk(1)
        );
        let v: Value = serde_json::from_slice(&s.chunk(1)).unwrap();
        assert_eq!(v["index"], 1);
        let p = &v["data"][0];
        assert_eq!(p["uuid"].as_str().unwrap().len(), 36);
        assert!(p["fn"].is_string() && p["ln"].is_string() && p["friends"].is_array());
    }

    #[test]
    fn every_object_is_in_exactly_one_chunk() {
        let s = source();
        assert_eq!(s.chunks(), 3);
        let mut seen = std::collections::HashSet::new();
        for c in 0..s.chunks() {
            let v: Value = serde_json::from_slice(&s.chunk(c)).unwrap();
            for p in v["data"].as_array().unwrap() {
                assert!(seen.insert(p["uuid"].as_str().unwrap().to_string()));
            }
        }
        assert_eq!(seen.len(), 250);
    }

    #[test]
    fn friendships_are_mutual_and_inside_the_chunk() {
        let s = source();
        let v: Value = serde_json::from_slice(&s.chunk(0)).unwrap();
        let people = v["data"].as_array().unwrap();
        let by_id: std::collections::HashMap<&str, &Value> = people
            .iter()
            .map(|p| (p["uuid"].as_str().unwrap(), p))
            .collect();
        let mut links = 0;
        for p in people {
            for f in p["friends"].as_array().unwrap() {
                let friend = by_id[f.as_str().unwrap()];
                assert!(friend["friends"].as_array().unwrap().contains(&p["uuid"]));
                links += 1;
            }
        }
        // app9's mock API gives about 12 friends per person
        assert!((800..1600).contains(&links), "{links} friendships");
    }
}

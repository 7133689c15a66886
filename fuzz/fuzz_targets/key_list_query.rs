//! The key-list query strings: NAVER Get Key List (`pageNo`, `pageSize`)
//! and Get Key Activity (`timestampFrom`, `timestampTo`, `pageNo`,
//! `pageSize`, `keyword`), NHN Get Key List (`type`, `name`, `status`,
//! `pageNumber`, `pageSize`), the key-store list's `detail` flag and the
//! read-back calls' `keyVersion`, each through axum's `Query` extractor
//! into the map the handlers read.
//!
//! Input: the query string.
//!
//! Holds: nothing panics; refusals are 400s; what is accepted is in range
//! (pages from 1, sizes within their bounds, an offset that is not
//! negative, a time range in order, a name of at most 100 characters).
#![no_main]

use hsm_kms::fuzzing::{
    naver_activity_params, naver_list_params, nhn_flag, nhn_key_filter, nhn_key_version, query_map,
};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    // A request line hyper would refuse never reaches a handler.
    let Ok(uri) = http::Uri::try_from(format!("/kms/v1/keys?{q}")) else {
        return;
    };
    let Some(map) = query_map(&uri) else {
        return;
    };
    match naver_list_params(&map) {
        Ok((no, size)) => {
            assert!((1..=i64::from(i32::MAX)).contains(&no));
            assert!((1..=200).contains(&size));
        }
        Err(e) => assert_eq!(e.status.as_u16(), 400),
    }
    match naver_activity_params(&map, NOW) {
        Ok(p) => {
            assert!(p.from <= p.to, "{p:?}");
            assert!(p.to >= 0);
            assert!((1..=i64::from(i32::MAX)).contains(&p.page_no));
            assert!((1..=200).contains(&p.page_size));
            assert!(p.keyword.is_none_or(|k| !k.is_empty()));
        }
        Err(e) => assert_eq!(e.status.as_u16(), 400),
    }
    match nhn_key_filter(&map) {
        Ok(f) => {
            assert!(f.offset >= 0, "{f:?}");
            assert!((10..=100).contains(&f.limit));
            assert!(f
                .name
                .is_none_or(|n| !n.is_empty() && n.chars().count() <= 100));
            assert!(f.nhn_type.is_none_or(
                |t| ["SECRET", "SYMMETRIC_KEY", "ASYMMETRIC_KEY"].contains(&t.as_str())
            ));
        }
        Err(e) => assert_eq!(e.status.as_u16(), 400),
    }
    if let Err(e) = nhn_flag(&map, "detail") {
        assert_eq!(e.status.as_u16(), 400);
    }
    match nhn_key_version(&map) {
        Ok(v) => assert!(v.is_none_or(|v| v >= 1)),
        Err(e) => assert_eq!(e.status.as_u16(), 400),
    }
});

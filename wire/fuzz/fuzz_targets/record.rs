//! The committed record decoder (what Kafka and Redis consumers, the alert
//! evaluator and `inspect` read) on arbitrary bytes: a record or a typed error,
//! never a panic nor an allocation beyond the sample limit. The column decoder
//! the evaluator uses, with some series' values declined, agrees with the
//! allocating one: the same header and timestamps, the same values where kept,
//! or the same error.
#![no_main]

use ferrule_wire::record::{decode_record, decode_record_filtered};
use ferrule_wire::SampleColumns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&declined, bytes)) = data.split_first() else {
        return;
    };
    let limit = 1 << 16;
    let keep = |i: usize| declined & (1 << (i % 8)) == 0;
    let mut columns = SampleColumns::default();
    let filtered = decode_record_filtered(bytes, limit, &mut columns, |_, i, _, _| keep(i));
    match (decode_record(bytes, limit), filtered) {
        (Ok(whole), Ok(header)) => {
            assert_eq!(whole.header, header);
            assert_eq!(whole.series.len(), columns.series().len());
            for (i, (a, b)) in whole.series.iter().zip(columns.series()).enumerate() {
                assert_eq!(a.sensor(), b.sensor());
                assert_eq!(a.timestamps_ns(), b.timestamps_ns());
                if !a.is_empty() && !keep(i) {
                    assert!(!b.has_values());
                    continue;
                }
                assert_eq!(a.quality(), b.quality());
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a.values()), bits(b.values()));
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("allocating decode {:?}, into columns {:?}", a.map(|_| ()), b),
    }
});

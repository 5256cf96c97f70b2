"""Event records, Avro codec, durable spool, shipper, integrity chain, CloudTrail import/export."""

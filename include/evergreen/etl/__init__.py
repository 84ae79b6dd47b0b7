"""Feature ETL: ``ingest`` (raw day -> gate -> features -> publish), ``validation`` (the data gate) and
``features`` (the derivations shared with training and drift)."""

"""Pure domain logic: ids and names, records, the job state machine, validation. No I/O here."""

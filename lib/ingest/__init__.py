"""What comes in: the sources (files, Kafka), parsing with a reason per bad row, the
point-in-time purchase history, what an availableNow run has still to read, and the activity
generator."""

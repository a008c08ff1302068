"""streamrec: a real-time recommendation engine on Spark Structured Streaming and Delta Lake."""

"""What the stream computes per user: sessions, profiles, interaction weights, and a batch's
changes to the live tables."""

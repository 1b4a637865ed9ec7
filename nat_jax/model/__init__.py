"""nat_jax.model"""

"""OAuth 2.1 through authlib: Baton supplies storage hooks and a framework-free adapter."""

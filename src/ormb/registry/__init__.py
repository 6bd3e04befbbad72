"""The remote repository Target: HTTP, auth challenges, credentials, registry errors."""

"""The demo repository's python models (copied into it by ``serving demo-repo``): code a user
would write, kept here so that lint and the type checker read it too."""

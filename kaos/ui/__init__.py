"""The web view of kaos (`kaos ui`): a loopback server (kaos.ui.server) and its static single-page assets."""

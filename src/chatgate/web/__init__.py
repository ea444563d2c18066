"""The web page's sources (chat page and admin dashboard, JavaScript built by Vite); ``dist/`` holds the built
files that ``chatgate.api.web`` serves (made by ``make install``; shipped as package data)."""

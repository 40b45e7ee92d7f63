"""The one rule for client names: a client's --name, a Hello's name and a certificate's CN."""

from __future__ import annotations

import re

CLIENT_NAME_REGEX = r"^[A-Za-z0-9_.@:-]{1,128}$"
CLIENT_NAME_PATTERN = re.compile(CLIENT_NAME_REGEX)
CLIENT_NAME_RULE = "1-128 characters of A-Z a-z 0-9 _ . @ : -"


def is_client_name(name: str) -> bool:
    """Whether ``name`` is a valid client name."""
    return CLIENT_NAME_PATTERN.fullmatch(name) is not None

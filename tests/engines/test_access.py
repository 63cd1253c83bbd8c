"""Who may change the server: the policy from the environment a Space (or a local run) has."""

import pytest

from engines.access import Access


def test_a_local_server_with_nothing_configured_is_open_to_the_person_at_the_keyboard():
    access = Access.from_env({})
    assert access.open and access.allows(None) and access.allows("anyone")


def test_on_a_space_its_author_and_the_listed_users_are_owners():
    access = Access.from_env({"SPACE_ID": "alice/aoti-studio", "SPACE_AUTHOR_NAME": "alice", "AOTI_OWNERS": "bob, carol"})
    assert access.owners == {"alice", "bob", "carol"} and not access.open
    assert access.allows("alice") and access.allows("carol")
    assert not access.allows(None) and not access.allows("mallory")
    assert Access.from_env({"SPACE_ID": "dave/space"}).owners == {"dave"}  # SPACE_ID alone names the author


def test_the_admin_token_works_anywhere_and_a_refusal_says_how_to_get_in():
    access = Access.from_env({"AOTI_ADMIN_TOKEN": "s3cret", "SPACE_AUTHOR_NAME": "alice"})
    assert access.allows(None, "s3cret") and not access.allows(None, "s3cre") and not access.allows(None, "")
    with pytest.raises(PermissionError) as refused:
        access.require("mallory", "guess")
    assert "sign in with Hugging Face as alice" in str(refused.value) and "AOTI_ADMIN_TOKEN" in str(refused.value)


def test_the_rate_limit_refuses_past_its_count_with_when_to_try_again():
    from engines.access import RateLimit

    limit = RateLimit(2, 600.0)
    limit.take()
    limit.take()
    with pytest.raises(ValueError, match=r"too many compiles: at most 2 every 600 s; try again in \d+ s"):
        limit.take()
    assert RateLimit(1, 0.0).take() is None  # an empty window never fills

"""Valid event data for tests, one builder per event type used."""


def lead_captured(lead_id: str) -> dict[str, object]:
    return {
        "lead_id": lead_id,
        "source": "web_form",
        "grade": "H",
        "owner_id": "rep-1",
        "campaign_id": None,
        "region": "华东",
        "contact": {"name": "王先生", "company": "上海某某科技", "phone": "+8613800000000", "email": None},
        "captured_at": "2026-11-23T08:00:00Z",
    }


def lead_contacted(lead_id: str, n: int) -> dict[str, object]:
    return {
        "lead_id": lead_id,
        "touch_id": f"touch-{n}",
        "channel": "phone",
        "contacted_at": "2026-11-23T09:00:00Z",
        "contacted_by": "rep-1",
        "note": f"call {n}",
    }


def stage_changed(opportunity_id: str, n: int) -> dict[str, object]:
    """The data of a sales.opportunity.stage_changed.v1 whose amount tells the n-th apart."""
    return {
        "opportunity_id": opportunity_id,
        "from_stage": "prospecting",
        "to_stage": "bidding",
        "probability": 30,
        "amount": f"{1000 + n}.00",
        "currency": "CNY",
        "owner_id": "rep-1",
        "changed_by": "rep-1",
        "changed_at": "2026-11-23T10:00:00Z",
    }


def opportunity_created(opportunity_id: str, n: int) -> dict[str, object]:
    """The data of a sales.opportunity.created.v1 of rep-1's whose amount tells the n-th apart."""
    return {
        "opportunity_id": opportunity_id,
        "name": f"项目 {n}",
        "account_id": "acc-1",
        "stage": "prospecting",
        "status": "open",
        "probability": 10,
        "amount": f"{10000 + n}.00",
        "currency": "CNY",
        "owner_id": "rep-1",
        "expected_close_date": "2026-12-31",
        "created_at": "2026-11-23T08:00:00Z",
        "lead_id": None,
        "campaign_id": None,
    }

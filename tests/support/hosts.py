"""A fake resolver for webhook targets: a hosts table instead of DNS, so no test ever looks a name up
(or sends anything) outside this machine."""


class Hosts:
    """Answers from a table; a name may be given several answers, one per lookup (the last repeats),
    as a rebinding DNS server would. `lookups` lists the names looked up, in order."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        answers = self.table.get(host)
        if answers is None:
            raise OSError(f"{host}: not in the test's hosts table")
        answer = answers[min(self.lookups.count(host), len(answers) - 1)]
        self.lookups.append(host)
        return answer

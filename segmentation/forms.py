"""Forms of the segmentation pages: input parsing and messages only, no business rules.

The services decide (and raise ``ServiceError``); these forms turn request data into the
arguments the services and selectors take.
"""

from __future__ import annotations

from django import forms
from django.core.validators import FileExtensionValidator

from segmentation.customer_selectors import ATTRIBUTE_KEY, CustomerFilters, FilterChoices
from segmentation.models import ImportKind, Segment, SubscriptionStatus

SCORE_CHOICES = [("", "Any")] + [(str(n), str(n)) for n in range(1, 6)]
#: Upload limit of the pages (the management commands take any size).
MAX_UPLOAD_BYTES = 200 * 1024 * 1024


class CustomerFilterForm(forms.Form):
    """The customer list's search and filters (GET). Invalid filters are reported and ignored."""

    q = forms.CharField(
        label="Search",
        required=False,
        max_length=254,
        help_text="Start of an email or name, or an exact external id.",
    )
    subscription_status = forms.ChoiceField(
        label="Subscription",
        required=False,
        choices=[("", "Any"), *SubscriptionStatus.choices],
    )
    segment = forms.ChoiceField(label="Segment", required=False)
    attribute = forms.CharField(
        label="Attribute",
        required=False,
        max_length=300,
        help_text="key=value, e.g. plan=pro",
    )
    r_score = forms.TypedChoiceField(
        label="R score", required=False, choices=SCORE_CHOICES, coerce=int, empty_value=None
    )
    f_score = forms.TypedChoiceField(
        label="F score", required=False, choices=SCORE_CHOICES, coerce=int, empty_value=None
    )
    rfm_segment = forms.ChoiceField(label="RFM segment", required=False)
    engagement_tier = forms.ChoiceField(label="Engagement tier", required=False)

    def __init__(self, data=None, *, choices: FilterChoices):
        super().__init__(data)
        self.fields["segment"].choices = [("", "Any"), *choices.segments]
        self.fields["rfm_segment"].choices = [("", "Any"), *choices.rfm_segments]
        self.fields["engagement_tier"].choices = [("", "Any")] + [
            (tier, tier) for tier in choices.engagement_tiers
        ]

    def clean_attribute(self) -> tuple[str, str] | None:
        raw = self.cleaned_data["attribute"].strip()
        if not raw:
            return None
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not sep or not ATTRIBUTE_KEY.fullmatch(key):
            raise forms.ValidationError(
                "Write key=value; keys are letters, digits, - and _ (e.g. plan=pro)."
            )
        return key, value.strip()

    def filters(self) -> CustomerFilters:
        """The valid part of the filters (a field with an error does not filter)."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        segment = None
        if data.get("segment"):
            segment = Segment.objects.filter(slug=data["segment"]).first()
        attribute = data.get("attribute")
        return CustomerFilters(
            search=data.get("q", ""),
            subscription_status=data.get("subscription_status", ""),
            segment=segment,
            attributes=(attribute,) if attribute else (),
            r_score=data.get("r_score"),
            f_score=data.get("f_score"),
            rfm_segment=data.get("rfm_segment", ""),
            engagement_tier=data.get("engagement_tier", ""),
        )

    @property
    def is_filtered(self) -> bool:
        return any(self.data.get(name) for name in self.fields)


class ImportForm(forms.Form):
    kind = forms.ChoiceField(
        label="What the file holds",
        choices=ImportKind.choices,
        initial=ImportKind.CUSTOMERS,
        widget=forms.RadioSelect,
    )
    file = forms.FileField(
        label="CSV file",
        help_text="UTF-8 CSV with a header row (comma, semicolon, tab or pipe separated).",
    )
    create_customers = forms.BooleanField(
        label="Create unknown customers",
        required=False,
        help_text="Events only: create a customer for an unknown external id instead of "
        "rejecting the row.",
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; "
                "use the import_customers / import_events commands for files this big."
            )
        return upload


class SegmentDetailsForm(forms.Form):
    """Name and description (every kind); the rule comes from the builder."""

    name = forms.CharField(label="Name", max_length=200)
    description = forms.CharField(
        label="Description", required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class RfmRangesForm(forms.Form):
    """The R and F score ranges of an RFM segment."""

    r_low = forms.TypedChoiceField(label="R from", choices=SCORE_CHOICES[1:], coerce=int)
    r_high = forms.TypedChoiceField(label="R to", choices=SCORE_CHOICES[1:], coerce=int)
    f_low = forms.TypedChoiceField(label="F from", choices=SCORE_CHOICES[1:], coerce=int)
    f_high = forms.TypedChoiceField(label="F to", choices=SCORE_CHOICES[1:], coerce=int)

    @classmethod
    def initial_for(cls, rule: dict) -> dict[str, int]:
        r, f = rule.get("r") or [1, 5], rule.get("f") or [1, 5]
        return {"r_low": r[0], "r_high": r[1], "f_low": f[0], "f_high": f[1]}

    def rule(self) -> dict:
        data = self.cleaned_data
        return {"r": [data["r_low"], data["r_high"]], "f": [data["f_low"], data["f_high"]]}


def split_identifiers(text: str) -> tuple[list[str], list[str]]:
    """Emails and external ids from free text: one per line (commas, semicolons and
    whitespace separate too); values with ``@`` are emails."""
    emails: list[str] = []
    external_ids: list[str] = []
    for token in text.replace(",", "\n").replace(";", "\n").split():
        token = token.strip()
        if token:
            (emails if "@" in token else external_ids).append(token)
    return list(dict.fromkeys(emails)), list(dict.fromkeys(external_ids))


class StaticAddForm(forms.Form):
    identifiers = forms.CharField(
        label="Emails or external ids",
        max_length=200_000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line (or separated by commas).",
    )

    def clean_identifiers(self) -> tuple[list[str], list[str]]:
        emails, external_ids = split_identifiers(self.cleaned_data["identifiers"])
        if not emails and not external_ids:
            raise forms.ValidationError("Enter at least one email or external id.")
        return emails, external_ids


class StaticCsvForm(forms.Form):
    file = forms.FileField(
        label="CSV of emails or external ids",
        validators=[FileExtensionValidator(["csv", "txt", "tsv"])],
        help_text="A header row naming an email and/or external_id column, or one value a line.",
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError("The file is too large.")
        return upload

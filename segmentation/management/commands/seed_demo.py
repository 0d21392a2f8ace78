from django.core.management.base import BaseCommand, CommandError

from abtest.errors import ServiceError
from segmentation.models import Customer
from segmentation.services.demo import demo_seed


class Command(BaseCommand):
    help = (
        "Demo data: the CDNOW dataset (load_cdnow) plus generated names, emails, attributes, "
        "browsing sessions and example segments, refreshed as of now."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="Do nothing (successfully) when the database already has customers.",
        )

    def handle(self, *args, if_empty: bool, **options):
        if if_empty and Customer.objects.exists():
            self.stdout.write("Demo data not loaded: the database already has customers.")
            return
        try:
            counts = demo_seed(progress=lambda message: self.stdout.write(f"  {message}"))
        except ServiceError as error:
            raise CommandError(error.message) from None
        self.stdout.write(
            self.style.SUCCESS(
                "Demo data loaded: {customers:,} customers, {purchases:,} purchases, "
                "{sessions:,} sessions.".format(**counts)
            )
        )

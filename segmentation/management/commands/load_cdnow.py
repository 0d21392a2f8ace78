from django.core.management.base import BaseCommand, CommandError

from abtest.errors import ServiceError
from segmentation.services.demo import cdnow_load


class Command(BaseCommand):
    help = (
        "Load the CDNOW dataset (23,570 customers, 69,659 purchases, 1997-01 to 1998-06) into "
        "an empty database and compute metrics as of 1998-07-01T00:00Z."
    )

    def handle(self, *args, **options):
        try:
            customers, events = cdnow_load(progress=lambda message: self.stdout.write(message))
        except ServiceError as error:
            raise CommandError(error.message) from None
        self.stdout.write(
            self.style.SUCCESS(f"Loaded {customers:,} customers and {events:,} purchases.")
        )
